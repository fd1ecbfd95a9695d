"""launch/ scripts: the local one runs (with a stand-in interpreter); the
cluster ones are checked for the commands they must issue."""
from __future__ import annotations

import os
import stat
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, "launch")


def _fake_python(tmp_path, exit_for_process=None):
  """An executable that records its arguments (one file per --process_id)."""
  fail = f'[[ "$*" == *"--process_id={exit_for_process}"* ]] && exit 3' if (
      exit_for_process is not None) else ""
  script = tmp_path / "fakepython"
  script.write_text(f"""#!/usr/bin/env bash
for a in "$@"; do case "$a" in --process_id=*) id="${{a#--process_id=}}";; esac; done
printf '%s\\n' "$@" > "{tmp_path}/args_$id"
{fail}
exit 0
""")
  script.chmod(script.stat().st_mode | stat.S_IEXEC)
  return str(script)


def test_local_multiprocess_starts_n_processes(tmp_path):
  env = dict(os.environ, PYTHON=_fake_python(tmp_path), PORT="23456",
             LOGDIR=str(tmp_path / "logs"))
  p = subprocess.run([os.path.join(LAUNCH, "local_multiprocess.sh"), "3",
                      "--config=configs/riad.py:demo", "--workdir=/tmp/x"], env=env,
                     capture_output=True, text=True, timeout=60)
  assert p.returncode == 0, p.stderr
  for i in range(3):
    args = (tmp_path / f"args_{i}").read_text().split("\n")
    assert args[:4] == ["-m", "maskjax.main", "--config=configs/riad.py:demo", "--workdir=/tmp/x"]
    assert "--coordinator_address=localhost:23456" in args
    assert "--num_processes=3" in args and f"--process_id={i}" in args
  assert sorted(os.listdir(tmp_path / "logs")) == [f"process_{i}.log" for i in range(3)]


def test_local_multiprocess_propagates_failure_and_usage(tmp_path):
  env = dict(os.environ, PYTHON=_fake_python(tmp_path, exit_for_process=1), PORT="23457",
             LOGDIR=str(tmp_path / "logs"))
  p = subprocess.run([os.path.join(LAUNCH, "local_multiprocess.sh"), "2", "--", "--workdir=w"],
                     env=env, capture_output=True, text=True, timeout=60)
  assert p.returncode == 3 and "a process failed" in p.stderr
  p = subprocess.run([os.path.join(LAUNCH, "local_multiprocess.sh"), "2"],
                     env=env, capture_output=True, text=True, timeout=60)
  assert p.returncode == 2 and "usage" in p.stderr


def test_tpu_script_passes_name_zone_and_args(tmp_path):
  """A stand-in gcloud records the command the pod script issues."""
  gcloud = tmp_path / "gcloud"
  gcloud.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > "{tmp_path}/gcloud_args"\n')
  gcloud.chmod(gcloud.stat().st_mode | stat.S_IEXEC)
  env = dict(os.environ, PATH=f"{tmp_path}:{os.environ['PATH']}")
  p = subprocess.run([os.path.join(LAUNCH, "tpu_vm_pod.sh"), "my-tpu", "us-central2-b",
                      "--config=configs/mala.py", "--workdir=gs://b/run"], env=env,
                     capture_output=True, text=True, timeout=60)
  assert p.returncode == 0, p.stderr
  args = (tmp_path / "gcloud_args").read_text().split("\n")
  assert args[:6] == ["compute", "tpus", "tpu-vm", "ssh", "my-tpu", "--zone=us-central2-b"]
  assert "--worker=all" in args
  cmd = [a for a in args if a.startswith("--command=")][0]
  assert "python -m maskjax.main --config=configs/mala.py --workdir=gs://b/run" in cmd


def test_cluster_scripts_issue_the_right_commands():
  for name in ("tpu_vm_pod.sh", "slurm_gpu.sbatch", "local_multiprocess.sh"):
    path = os.path.join(LAUNCH, name)
    assert os.access(path, os.X_OK), name
    assert subprocess.run(["bash", "-n", path]).returncode == 0, name
  tpu = open(os.path.join(LAUNCH, "tpu_vm_pod.sh")).read()
  assert "gcloud compute tpus tpu-vm ssh" in tpu and "--worker=all" in tpu
  assert "python -m maskjax.main" in tpu
  slurm = open(os.path.join(LAUNCH, "slurm_gpu.sbatch")).read()
  assert "srun" in slurm and "--gpus-per-task=1" in slurm
  for flag in ('--coordinator_address="$COORDINATOR"', '--num_processes="$SLURM_NTASKS"',
               '--process_id="$SLURM_PROCID"'):
    assert flag in slurm
  assert "scontrol show hostnames" in slurm
