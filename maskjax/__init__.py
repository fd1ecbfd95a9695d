"""maskjax: masking-based self-supervised image anomaly detection in JAX/Flax.

    import maskjax
    config = maskjax.get_config("riad:demo", train={"steps": 50})
    run = maskjax.fit(config, "runs/riad")
    detector = maskjax.Detector.load("runs/riad")
    detector.predict("photos/*.png")
    maskjax.export_detector("runs/riad", "export/")
    maskjax.Detector.load_exported("export/").predict("photo.png")

Names are imported on first use, so `import maskjax` stays light (an exported
detector runs without any method or model code).
"""
__version__ = "0.1.0"

_API = {"get_config": "maskjax.api", "fit": "maskjax.api", "Run": "maskjax.api",
        "Detector": "maskjax.api", "Prediction": "maskjax.api",
        "demo_images": "maskjax.api", "export_detector": "maskjax.api"}
__all__ = sorted(_API)


def __getattr__(name):
  if name in _API:
    import importlib
    return getattr(importlib.import_module(_API[name]), name)
  raise AttributeError(f"module 'maskjax' has no attribute {name!r}")
