"""serve: the light prediction runtime (LiteRT + numpy + Pillow, no TensorFlow).

It owns the model's input contract: how an image becomes a tensor (`serve.preprocess`) and how
an export describes itself (`serve.model_info`). `retrain` imports both, never the reverse.
"""
