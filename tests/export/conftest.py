"""The export tests' shared export: a tiny Omniglot model with a random Adam state."""

import pytest

from keras_reptile.export.saved_model import export_saved_model
from tests.export.helpers import OMNI_RECIPE, PROTOCOL, RESULT, make_card, make_module


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    module = make_module(OMNI_RECIPE, PROTOCOL, adam_step=700.0, random_adam_v=True)
    base = tmp_path_factory.mktemp("saved_models") / "omniglot"
    card = make_card("omniglot", module, OMNI_RECIPE, [RESULT])
    path = export_saved_model(module, str(base), card)
    weights = [w.numpy() for w in module.weights]
    return dict(
        module=module,
        weights=weights,
        adam_v=[v.numpy() for v in module.adam_v],
        path=path,
        base=base,
        card=card,
    )
