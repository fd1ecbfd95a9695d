"""DINOHead vs an independent PyTorch head with DINO's key names."""
from __future__ import annotations

import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import torch_reference as tr  # noqa: E402

from flax import nnx  # noqa: E402

from maskjax import weights as W  # noqa: E402
from maskjax.models import heads  # noqa: E402
from maskjax.weights import convert  # noqa: E402


@pytest.mark.parametrize("nlayers,parametrized", [(3, False), (2, True), (1, False)])
def test_dino_head_matches_torch(tmp_path, nlayers, parametrized):
  torch.manual_seed(nlayers)
  ref = tr.DINOHead(24, 40, nlayers=nlayers, hidden_dim=32, bottleneck_dim=16).eval()
  with torch.no_grad():  # a trained head: g != 1, so weight norm is really exercised
    ref.last_layer.weight_g.uniform_(0.5, 2.0)
  sd = ref.state_dict()
  if parametrized:  # newer torch: torch.nn.utils.parametrizations.weight_norm names
    sd["last_layer.parametrizations.weight.original0"] = sd.pop("last_layer.weight_g")
    sd["last_layer.parametrizations.weight.original1"] = sd.pop("last_layer.weight_v")
  torch.save({"teacher": {f"backbone.x.weight": torch.zeros(2),
                          **{f"head.{k}": v for k, v in sd.items()}}}, tmp_path / "h.pth")
  meta = convert.convert(str(tmp_path / "h.pth"), str(tmp_path / "o"), "dino_head")
  assert meta["config"]["nlayers"] == nlayers and meta["config"]["out_dim"] == 40
  model = W.build(str(tmp_path / "o"))
  assert isinstance(model.last_layer.weight_g, heads.FrozenParam)
  x = torch.randn(5, 24)
  with torch.no_grad():
    y = ref(x).numpy()
  got = np.asarray(model(jnp.asarray(x.numpy())))
  np.testing.assert_allclose(got, y, rtol=1e-5, atol=1e-5 * np.abs(y).max())


def test_norm_last_layer_keeps_g_out_of_params():
  h = heads.DINOHead(8, 10, hidden=16, bottleneck=4, rngs=nnx.Rngs(0))
  assert "weight_g" not in nnx.state(h, nnx.Param).to_pure_dict()["last_layer"]
  h2 = heads.DINOHead(8, 10, hidden=16, bottleneck=4, norm_last_layer=False, rngs=nnx.Rngs(0))
  assert "weight_g" in nnx.state(h2, nnx.Param).to_pure_dict()["last_layer"]
