"""Runs the official repository's MEMIT_lti `compute_z` on SmolLM2-135M for WORK/requests.json.

The official code (WORK/official, patched by official.patch only to run on the CPU, to record the
stop step, and to read the decoder layers' outputs as transformers >= 4.5x returns them) searches
each request's target on the unedited model, as the first batch of `execute_memit_lti` does.
Writes WORK/$OUT (default official_z.npz): z, stop_it, target_init, case_ids.
Environment: WORK, GGUF (the SmolLM2 GGUF file), THREADS (torch threads, default 1),
DTYPE (float32, or float64 for a rounding reference), ONLY (comma-separated case ids).
"""

import json
import os
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

WORK = Path(os.environ["WORK"]).resolve()
GGUF = Path(os.environ.get("GGUF", "~/.cache/jaxedit/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"))
GGUF = GGUF.expanduser()
if os.environ.get("DTYPE") == "float64":
    torch.set_default_dtype(torch.float64)  # the search state too, not just the weights
torch.set_num_threads(int(os.environ.get("THREADS", "1")))
# Imported by the official package, never called by compute_z.
for _name, _attrs in {
    "datasets": {"load_dataset": None},
    "matplotlib": {},
    "matplotlib.style": {"context": None},
}.items():
    sys.modules[_name] = types.SimpleNamespace(**_attrs)  # type: ignore[assignment]
os.chdir(WORK / "official")  # util/globals.py reads ./globals.yml
sys.path.insert(0, os.getcwd())
from memit_lti import compute_z as cz  # noqa: E402
from memit_lti.memit_hparams import MEMITLTIHyperParams  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

tok = AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
dtype = getattr(torch, os.environ.get("DTYPE", "float32"))
model = AutoModelForCausalLM.from_pretrained(GGUF.parent, gguf_file=GGUF.name, dtype=dtype).eval()
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
print("pad", tok.pad_token_id, tok.padding_side, "bos", tok.bos_token_id)
hp = MEMITLTIHyperParams(**json.loads((WORK / "memit_lti_smollm2.json").read_text()))
templates = json.loads((WORK / "templates.json").read_text())
reqs = json.loads((WORK / "requests.json").read_text())
if os.environ.get("ONLY"):
    reqs = [r for r in reqs if str(r["case_id"]) in os.environ["ONLY"].split(",")]
zs, stops, inits, ids = [], [], [], []
t0 = time.time()
for rec in reqs:
    r = dict(rec["requested_rewrite"], case_id=rec["case_id"])
    r["target_new"] = {"str": " " + r["target_new"]["str"]}  # as execute_memit_lti does
    z, _, _ = cz.compute_z(model, tok, r, hp, hp.layers[-1], templates)
    zs.append(z.detach().numpy())
    stops.append(cz.LAST_STOP_IT)
    inits.append(cz.LAST_TARGET_INIT.numpy())
    ids.append(rec["case_id"])
print(f"{len(reqs)} requests in {time.time() - t0:.1f} s; stops {stops}")
np.savez(
    WORK / os.environ.get("OUT", "official_z.npz"),
    z=np.stack(zs),
    stop_it=np.array(stops),
    target_init=np.stack(inits),
    case_ids=np.array(ids),
)
