"""Writes the inputs of the LTI parity check into OUT: the official-style MEMIT_lti hparams JSON for
SmolLM2-135M (the repository's Llama-3-8B MEMIT_lti JSON with SmolLM2's loss layer 29, mid layer 14,
tied head, 200 covariance samples), the fixed context templates of ../shared/golden, and CounterFact
records START..START+N of counterfact-edit.json in the nested layout both codes read."""

import json
import sys
from pathlib import Path

from jaxedit.requests import load_requests

official, shared, out, start, num = sys.argv[1:6]
out_dir = Path(out)
hp = json.loads((Path(official) / "hparams/MEMIT_lti/llama3-8b.json").read_text())
hp.update(v_loss_layer=29, midlayers=[14], mom2_n_samples=200, lm_head_module="model.embed_tokens")
(out_dir / "memit_lti_smollm2.json").write_text(json.dumps(hp, indent=2))
meta = json.loads((Path(shared) / "golden/meta.json").read_text())
(out_dir / "templates.json").write_text(json.dumps(meta["context_templates"]))
# jaxedit's own reading of the flattened file (subject -> "{}"), written in the nested layout.
nested = [
    {
        "case_id": r.case_id,
        "requested_rewrite": {
            "prompt": r.prompt,
            "subject": r.subject,
            "target_new": {"str": r.target_new},
            "target_true": {"str": r.target_true},
        },
        "paraphrase_prompts": list(r.paraphrase_prompts),
        "neighborhood_prompts": list(r.neighborhood_prompts),
    }
    for r in load_requests(
        Path(shared) / "data/counterfact/counterfact-edit.json", int(start), int(num)
    )
]
(out_dir / "requests.json").write_text(json.dumps(nested, indent=1))
print(f"{len(nested)} requests, case ids {[n['case_id'] for n in nested]}")
