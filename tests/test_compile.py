"""``compile=true``: the training step under ``torch.compile`` (``loop.step_module``).

The CLI run compiles with the ``aot_eager`` backend (torch's own
``TORCH_COMPILE_OVERRIDE_BACKENDS``): dynamo captures the step and AOT autograd
derives its backward as with the default backend, but inductor's C++ code generation,
which took 112 s for this two-stage run from a cold cache on the 2-core test machine
(46 s warm), is left out.
"""

from __future__ import annotations

import os

import torch

from harness.config import load_config
from harness.engine.loop import StageLoss, step_module
from harness.method import get_method
from harness.models import build_encoder
from harness.plan import make_plan
from tests.conftest import FAST, run_cli

AOT_EAGER = {**os.environ, "TORCH_COMPILE_OVERRIDE_BACKENDS": ">=0:aot_eager"}


def test_compile_enters_a_run_id_only_where_it_is_on():
    ids = {
        setting: [spec.run_id for spec in make_plan(load_config([*FAST, *setting]))]
        for setting in ((), ("compile=false",), ("compile=true",))
    }
    assert ids[()] == ids[("compile=false",)]
    assert not set(ids[()]) & set(ids[("compile=true",)])


def test_only_the_step_is_compiled_so_the_models_keys_stay_plain():
    cfg = load_config([])
    method = get_method("baseline")(cfg)
    model = build_encoder(cfg.model.name, 1, 10, cfg.data.crop)
    keys = list(model.state_dict())
    module = step_module(model, method, method.stages()[0], compile=True)
    assert isinstance(module, torch._dynamo.eval_frame.OptimizedModule)
    assert isinstance(module._orig_mod, StageLoss)
    assert list(model.state_dict()) == keys and not any("_orig_mod" in k for k in keys)


def test_a_compiled_run_trains_through_the_cli_with_the_same_checkpoint_keys(tmp_path):
    args = [*FAST, "schedule.pretrain.epochs=1", "report.plots=false", "logger=[csv]"]
    folders = {}
    for compiled in (False, True):
        results = tmp_path / str(compiled)
        done = run_cli(
            *args, f"compile={str(compiled).lower()}", f"results={results}", env=AOT_EAGER
        )
        assert done.returncode == 0, done.stderr
        (folders[compiled],) = (results / "digits").glob("*/metrics.json")
    plain, compiled = (folders[c].parent for c in (False, True))
    assert plain.name != compiled.name  # compile=true is in the run id
    for name in ("checkpoint.pt", "stage-pretrain.pt", "stage-finetune.pt"):
        states = [torch.load(f / name, weights_only=True) for f in (plain, compiled)]
        if name == "checkpoint.pt":
            states = [state["model"] for state in states]
        assert list(states[0]) == list(states[1]), name
