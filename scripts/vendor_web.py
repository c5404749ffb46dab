"""Vendor MediaPipe Tasks for Web into serve/web/vendor/tasks-vision/, for the page's "Run in this browser".

    python scripts/vendor_web.py          (the Makefile runs it; needs Node.js's npm; stdlib only)

`npm ci` installs serve/web/device/package-lock.json's exact @mediapipe/tasks-vision (its integrity
checked by npm) in a temporary folder, so no node_modules is left in the source tree or the image's
build context. Only what the page loads is kept: the ES module bundle and the WebAssembly runtime,
with and without SIMD (browsers without WebAssembly SIMD, e.g. Safari before 16.4, get the latter).
They are stored gzip-compressed (each 11 MB WebAssembly file is 3.3 MB so), and `serve` sends them
so to browsers; their package.json goes along, for the version and the licence (Apache-2.0). The
folder is replaced whole by a new one renamed into place. When it holds the locked version already,
nothing is done.

The pin is 0.10.35, the newest release without usage logging: 1.0.0 and later POST usage statistics
from the page to odml.pa.googleapis.com every minute and when a classifier closes, which the page
promises not to do (tests/test_web_device.py fails on it).

Exit codes: 0 vendored or up to date, 2 npm missing, 1 npm or a file failed.
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEVICE = REPO / "serve" / "web" / "device"  # package.json and package-lock.json
VENDOR = REPO / "serve" / "web" / "vendor" / "tasks-vision"
PACKAGE = "@mediapipe/tasks-vision"
# What the page loads (FilesetResolver picks the SIMD or the no-SIMD runtime); serve.device serves these.
FILES = (
    "vision_bundle.mjs",
    "wasm/vision_wasm_internal.js",
    "wasm/vision_wasm_internal.wasm",
    "wasm/vision_wasm_nosimd_internal.js",
    "wasm/vision_wasm_nosimd_internal.wasm",
)


def locked_version() -> str:
    """The version package-lock.json pins."""
    lock = json.loads((DEVICE / "package-lock.json").read_text())
    return lock["packages"][f"node_modules/{PACKAGE}"]["version"]


def vendored_version() -> str | None:
    """The version in the vendor folder when every file is there, else None."""
    try:
        version = json.loads((VENDOR / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        return None
    return version if all((VENDOR / f"{name}.gz").is_file() for name in FILES) else None


def vendor(npm: str) -> None:
    """npm ci in a scratch folder, then the files, compressed, into a new folder renamed over VENDOR."""
    with tempfile.TemporaryDirectory(prefix="vendor_web.") as scratch:
        work = Path(scratch)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(DEVICE / name, work / name)
        command = [npm, "ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
        subprocess.run(command, cwd=work, check=True)
        source = work / "node_modules" / PACKAGE
        staging = VENDOR.with_name(f".{VENDOR.name}.tmp")
        shutil.rmtree(staging, ignore_errors=True)
        for name in FILES:
            target = staging / f"{name}.gz"
            target.parent.mkdir(parents=True, exist_ok=True)
            # mtime 0: the same package gives the same bytes, so an image layer stays cached
            with (source / name).open("rb") as plain, gzip.GzipFile(target, "wb", 9, mtime=0) as packed:
                shutil.copyfileobj(plain, packed)
        shutil.copy(source / "package.json", staging / "package.json")
        old = VENDOR.with_name(f".{VENDOR.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if VENDOR.exists():
            VENDOR.rename(old)
        staging.rename(VENDOR)
        shutil.rmtree(old, ignore_errors=True)


def main() -> int:
    wanted = locked_version()
    if vendored_version() == wanted:
        print(f"vendor_web: {PACKAGE} {wanted} is already in {VENDOR.relative_to(REPO)}")
        return 0
    npm = shutil.which("npm")
    if npm is None:
        print(f"vendor_web: npm is missing: install Node.js (18 or newer) to vendor {PACKAGE}", file=sys.stderr)
        return 2
    try:
        vendor(npm)
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"vendor_web: vendoring {PACKAGE} {wanted} failed: {e}", file=sys.stderr)
        return 1
    sizes = ", ".join(f"{name} {(VENDOR / f'{name}.gz').stat().st_size / 1e6:.2f} MB" for name in FILES)
    print(f"vendor_web: {PACKAGE} {wanted} in {VENDOR.relative_to(REPO)} (gzip: {sizes})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
