"""`benchmarks/gpu_suite.sh --smoke`: the GPU suite's code at tiny sizes on the CPU,
so the one-command GPU benchmark cannot rot. Timing values are not checked."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

STEPS = ("torch_twins", "ssm_inference", "train_step", "mala_stage1", "aca_pretrain",
         "data_pipeline", "eval_throughput")


def test_gpu_suite_smoke(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable)
  proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_suite.sh"), "--smoke",
                         "--out", str(tmp_path)], cwd=ROOT, env=env, capture_output=True,
                        text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
  files = [f for f in os.listdir(tmp_path) if f.startswith("gpu_smoke_") and f.endswith(".json")]
  assert len(files) == 1, os.listdir(tmp_path)
  with open(tmp_path / files[0]) as f:
    res = json.load(f)
  assert res["smoke"] is True
  assert set(res["steps"]) == set(STEPS)
  for name in STEPS:
    assert res["steps"][name]["status"] == "ok", (name, res["steps"][name]["status"])
    assert "result" in res["steps"][name], name
  twins = res["steps"]["torch_twins"]["result"]
  assert twins["all_equal"], [(r["model"], r["max_rel_diff"]) for r in twins["rows"]]
  models = {r["model"] for r in twins["rows"]}
  assert {"riad_unet", "mae_vit_l16"} <= models
  phases = {(r["model"], r["phase"]) for r in twins["rows"] if r.get("img_per_s")}
  assert ("riad_unet", "train_step") in phases and ("mae_vit_l16", "train_step") in phases
  ssm = res["steps"]["ssm_inference"]["result"]
  assert ssm["pytorch_twin_per_image_loop"]["iterations_equal"]
  (ev,) = res["steps"]["eval_throughput"]["result"]["rows"]
  assert ev["serial_equals_pipelined"] and ev["pipelined_img_s"] > 0
  assert res["table"], "no summary rows"
  assert (tmp_path / files[0].replace(".json", ".md")).exists()
  # nothing written into the repository's results folder
  assert not any(f.startswith("gpu_smoke_") for f in os.listdir(
      os.path.join(ROOT, "benchmarks", "results")))
