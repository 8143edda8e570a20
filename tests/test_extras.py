"""The GLUE stack (transformers, datasets, tokenizers) is an extra: without it everything else
trains, and a GLUE config is one line naming the extra."""

import subprocess
import sys

BLOCKED = '''
import sys
class NotInstalled:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("transformers", "datasets", "tokenizers"):
            raise ModuleNotFoundError(f"No module named {name!r}")
sys.meta_path.insert(0, NotInstalled())
sys.argv = ["msam-train", *sys.argv[1:]]
from msam.train import main
main()
'''


def run(tmp_path, *overrides):
    return subprocess.run([sys.executable, "-c", BLOCKED, *overrides, "epochs=1", "device=cpu", "log_every_steps=0",
                           f"paths.runs={tmp_path}/runs"], capture_output=True, text=True, timeout=300, cwd=tmp_path)


def test_image_training_needs_no_text_stack(tmp_path):
    result = run(tmp_path, "method=msam", "method.m=4", "dataset=synthetic", "dataset.image_shape=[1,8,8]",
                 "dataset.mean=[0.5]", "dataset.std=[0.2887]", "dataset.train_size=64", "dataset.test_size=32",
                 "batch_size=32")
    assert result.returncode == 0, result.stderr[-2000:]
    assert "transformers" not in result.stderr


def test_a_glue_config_without_the_extra_is_one_line(tmp_path):
    result = run(tmp_path, "dataset=sst2", "model=roberta_base", "method=sam")
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].endswith("needs the GLUE extra (transformers, datasets, tokenizers): pip install 'msam[glue]'")
    assert "Traceback" not in result.stderr
