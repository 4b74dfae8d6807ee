"""A tiny, fast setting for tests and the CI notebook run: random 4-layer models,
few search steps. LTI is off; its mid layer is set (block 3, above the target layer 2) so that
`--config.search.lti=true` alone gives a runnable config.
"""

from jaxedit.config import FIXED_TEMPLATES, EditConfig, SearchConfig, SolveConfig, StatsConfig


def get_config():
    return EditConfig(
        method="ENCORE",
        layers=(1, 2),
        search=SearchConfig(lr=0.5, num_steps=8, mpes_patience=2, midlayer=3),
        solve=SolveConfig(cov_weight=10.0, norm_lambda=1.0),
        stats=StatsConfig(num_samples=50, max_length=64),
        templates=FIXED_TEMPLATES,
    )
