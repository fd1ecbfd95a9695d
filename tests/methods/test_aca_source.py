"""ACA with `config.input.source_size` > 0: the test scales are the photo
(`image_source`) resized to each scale, and the pretraining crops are cut
from it; with 0 (the demo) everything is what it was."""
from __future__ import annotations

import os as _os
import sys as _sys

_sys.path.insert(0, _os.path.join(_os.path.dirname(__file__), ".."))
import stage_helpers  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from configs import aca as aca_config  # noqa: E402
from maskjax import configs, runner  # noqa: E402
from maskjax.errors import ConfigError  # noqa: E402
from maskjax.ops import augment, normalize  # noqa: E402

SIZE, SOURCE = 32, 64


def _tiny(source=SOURCE, scales=(32, 48, 64)):
  c = stage_helpers.tiny_aca_config(scales=scales)
  c.input.image_size = SIZE
  c.input.source_size = source
  return c


def _pil_resize(src: np.ndarray, size: int, box=None) -> np.ndarray:
  """Independent reference: PIL's bilinear resize of a float image, channel by
  channel in mode "F" (antialiased when shrinking; `box` = (x0, y0, x1, y1))."""
  return np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(src[..., c]), mode="F")
                              .resize((size, size), Image.BILINEAR, box=box), np.float32)
                   for c in range(src.shape[-1])], axis=-1)


def _photos(n=2, seed=0):
  """Detailed sources (noise plus stripes at the source's resolution) and their
  input images (the photo at 32 px, as the pipeline makes both)."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:SOURCE, :SOURCE]
  stripes = (0.5 + 0.5 * np.sin(xx * 2.6 + yy * 0.7))[..., None]
  src = np.clip(0.5 * rng.random((n, SOURCE, SOURCE, 3)) + 0.5 * stripes, 0, 1).astype(np.float32)
  img = np.stack([_pil_resize(s, SIZE) for s in src])
  return src, img


def _batch(src, img):
  n = src.shape[0]
  return {"image": jnp.asarray(img), "image_source": jnp.asarray(src),
          "mask": jnp.zeros((n, SIZE, SIZE), jnp.float32), "label": jnp.zeros((n,), jnp.int32),
          "category_id": jnp.zeros((n,), jnp.int32)}


@pytest.fixture(scope="module")
def finetuned():
  method = stage_helpers.build(_tiny())
  _, s2 = stage_helpers.stages(method)
  return jax.jit(s2.init)(jax.random.key(2), None)


def test_score_resizes_the_source_to_each_scale(finetuned):
  method = stage_helpers.build(_tiny())
  src, img = _photos()
  out = jax.device_get(jax.jit(method.score)(finetuned, _batch(src, img), {}))
  # reference: the source resized by PIL to each scale, scored by the same model
  maps, probs = [], []
  forward = jax.jit(method.forward, static_argnums=2)
  for s in (32, 48, 64):
    xs = np.stack([_pil_resize(x, s) for x in src]) if s != SOURCE else src
    logits, seg = forward(finetuned["params"], jnp.asarray(xs), (SIZE, SIZE))
    maps.append(np.asarray(jax.nn.sigmoid(seg)))
    probs.append(np.asarray(jax.nn.softmax(logits, axis=-1)[:, 1]))
  assert out["anomaly_map"].shape == (2, SIZE, SIZE)
  np.testing.assert_allclose(out["anomaly_map"], np.mean(maps, 0), rtol=0, atol=2e-5)
  np.testing.assert_allclose(out["image_score"], np.mean(probs, 0), rtol=0, atol=2e-5)
  np.testing.assert_array_equal(out["decision"], (np.stack(probs) > 0.5).sum(0) * 2 > 3)
  # the previous path (the 32 px image upsampled) scores these detailed photos otherwise
  old = stage_helpers.build(_tiny(source=0))
  prev = jax.device_get(jax.jit(old.score)(finetuned, _batch(src, img), {}))
  assert np.abs(prev["anomaly_map"] - out["anomaly_map"]).max() > 1e-3
  # at the input's own scale both paths see the photo at 32 px (jax's antialiased
  # resize of the source there, PIL's resize here): that scale's map agrees
  np.testing.assert_allclose(maps[0], np.asarray(jax.nn.sigmoid(
      forward(finetuned["params"], jnp.asarray(img), (SIZE, SIZE))[1])), rtol=0, atol=1e-4)


def test_score_without_image_source_names_the_key(finetuned):
  method = stage_helpers.build(_tiny())
  src, img = _photos()
  batch = _batch(src, img)
  del batch["image_source"]
  with pytest.raises(ConfigError, match="source_size"):
    method.score(finetuned, batch, {})


def test_detector_predict_feeds_the_photo_and_export_refuses(finetuned, tmp_path):
  """`maskjax.Detector.predict` prepares each file at input.image_size and at
  input.source_size, as the pipeline does; score() without the second is
  refused, and so is an export (the artifact takes one image)."""
  from maskjax import api, export
  from maskjax.data import images
  c = _tiny()
  method = stage_helpers.build(c)
  src, _ = _photos(n=3, seed=4)
  paths = []
  for i, x in enumerate(src):
    paths.append(str(tmp_path / f"p{i}.png"))
    Image.fromarray((x * 255).round().astype(np.uint8)).resize((96, 80)).save(paths[-1])
  stats = {"threshold": 0.5, "min": 0.0, "categories": ["a"]}
  det = api.Detector(c, str(tmp_path), method, finetuned, None, {}, stats)
  preds = det.predict(paths)
  load = lambda p, n: images.load_image(p, n, convert_unusual=True)  # noqa: E731
  batch = {"image": np.stack([load(p, SIZE) for p in paths]),
           "image_source": np.stack([load(p, SOURCE) for p in paths]),
           "mask": np.zeros((3, SIZE, SIZE), np.float32), "label": np.zeros((3,), np.int32),
           "category_id": np.zeros((3,), np.int32)}
  ref = jax.device_get(jax.jit(method.score)(finetuned, batch, {}))
  np.testing.assert_allclose([p.score for p in preds], ref["image_score"], rtol=0, atol=1e-6)
  assert preds[0].anomaly_map.shape == (80, 96)
  with pytest.raises(ConfigError, match="source_size=64"):
    det.score(batch["image"])
  with pytest.raises(ConfigError, match="config.input.source_size=64"):
    export.export_run(str(tmp_path / "run"), str(tmp_path / "out"), config=c)
  assert not (tmp_path / "out").exists()


def _fixed_box(key, height, width, scale, ratio=(3 / 4, 4 / 3)):
  """A fixed box, as fractions of the image it is drawn on."""
  del key, scale, ratio
  return jnp.asarray([0.25 * height, 0.125 * width, 0.5 * height, 0.625 * width], jnp.float32)


def test_pretraining_crops_are_cut_from_the_source(monkeypatch):
  monkeypatch.setattr(augment, "random_resized_crop_params", _fixed_box)
  monkeypatch.setattr(augment, "color_augment", lambda key, img, **kw: img)
  src, img = _photos(n=2, seed=1)
  views = {}
  for source in (SOURCE, 0):
    method = stage_helpers.build(_tiny(source=source))
    s1, _ = stage_helpers.stages(method)
    state = jax.jit(s1.init)(jax.random.key(0), None)
    per_example, _ = jax.jit(method.prepare_pretrain)(state, _batch(src, img),
                                                      jax.random.key(5), 0)
    views[source] = {k: np.asarray(v) for k, v in per_example.items() if k.startswith("views/")}
  mean, std = np.asarray(normalize.IMAGENET_MEAN), np.asarray(normalize.IMAGENET_STD)
  for name, size in (("global", 32), ("local", 16)):
    got = views[SOURCE][f"views/{name}"] * std + mean     # [B, num, size, size, 3] in [0, 1]
    box = (0.125 * SOURCE, 0.25 * SOURCE, 0.75 * SOURCE, 0.75 * SOURCE)  # x0, y0, x1, y1
    for i in range(2):
      ref = _pil_resize(src[i], size, box)
      for v in range(got.shape[1]):
        np.testing.assert_allclose(got[i, v], ref, rtol=0, atol=1e-5)
    # source_size 0: the same fractions of the 32 px image (softer, other pixels)
    old = views[0][f"views/{name}"] * std + mean
    half = tuple(v * SIZE / SOURCE for v in box)
    for i in range(2):
      for v in range(old.shape[1]):
        np.testing.assert_allclose(old[i, v], _pil_resize(img[i], size, half), rtol=0, atol=1e-5)
    assert np.abs(old - got).max() > 0.02         # 2,000x the tolerance above


def test_random_boxes_are_the_same_fractions_at_any_side():
  for i in range(20):
    for scale in ((0.4, 1.0), (0.05, 0.4)):
      k = jax.random.key(i)
      small = np.asarray(augment.random_resized_crop_params(k, 224, 224, scale))
      large = np.asarray(augment.random_resized_crop_params(k, 512, 512, scale))
      np.testing.assert_allclose(large, small * 512 / 224, rtol=2e-6, atol=1e-4)


def _state_leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(jax.tree.map(
      lambda a: jax.random.key_data(a) if jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else a,
      tree))]


def test_source_size_0_ignores_image_source_and_is_a_recorded_run_without_the_key(tmp_path):
  """The demo's 0, and a run recorded before the key existed (its config.json
  lacks it: read as base_config's 0), make the same pretraining views,
  targets and kept tokens and the same scores, bit for bit, whether the batch
  carries an image_source or not (the two functions that read the key). The
  whole demo with 0 against the code before the key was compared once, bit
  for bit: docs/RECIPES.md "ACA"."""
  import json

  from maskjax import workdir as workdir_lib
  outs = []
  for variant in ("zero", "recorded"):
    c = _tiny(source=0, scales=(32, 48))
    c.method.pretrain.num_local = 1
    c.model.backbone_overrides.depth = 1
    src, img = _photos(n=4, seed=2)
    batch = _batch(src, img)
    if variant == "recorded":
      old = json.loads(c.to_json())
      del old["input"]["source_size"]
      (tmp_path / "config.json").write_text(json.dumps(old))
      c = workdir_lib.load_run_config(str(tmp_path))
      assert c.input.source_size == 0
    else:
      del batch["image_source"]
    method = stage_helpers.build(c)
    s1, s2 = stage_helpers.stages(method)
    st = jax.jit(s1.init)(jax.random.key(0), None)
    prepared = jax.jit(method.prepare_pretrain)(st, batch, jax.random.key(1), 0)
    st2 = jax.jit(s2.init)(jax.random.key(2), st)
    out = jax.jit(method.score)(st2, batch, {})
    outs.append(_state_leaves((prepared, out)))
  assert len(outs[0]) == len(outs[1]) == 9   # q, 2 x views, 2 x kept ids, fraction; 3 outputs
  for a, b in zip(*outs):
    np.testing.assert_array_equal(a, b)


def test_config_values_and_describe():
  full, demo = aca_config.get_config(), aca_config.get_config("demo")
  assert full.input.source_size == 512 == max(full.method.test_scales)
  assert demo.input.source_size == 0
  assert "512 px photo" in stage_helpers.build(full).describe()["image_source"]
  assert stage_helpers.build(demo).describe()["image_source"].startswith("off")
  c = _tiny()
  c.input.source_size = -2
  with pytest.raises(ConfigError, match="config.input.source_size=-2"):
    stage_helpers.build(c)


def test_plan_reports_the_source_size(tmp_path, capsys):
  root = stage_helpers.write_counts_dataset(tmp_path / "data", {"a": 4})
  c = configs.get_config("aca")
  c.input.data_dir = root
  res = runner.run(c, str(tmp_path / "run"), mode="plan")
  facts = res["plan"]["units"][0]["method_facts"]
  assert facts["image_source"].startswith("512 px photo (input.source_size)")
  assert "image_source: 512 px photo" in capsys.readouterr().out
