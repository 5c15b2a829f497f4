"""The feature gap: a grid's ``vm_drop_features`` withholds features from the VMs (fuxictr's
``use_features``) while the FM keeps them; inconsistent drops are refused."""
import pytest
import yaml
from fuxictr.pytorch.layers import FeatureEmbeddingDict

from exfm_plugin.config import build_model
from exfm_plugin.pipeline.artifacts import ArtifactStore
from exfm_plugin.pipeline.grid import load_grid
from exfm_plugin.pipeline.context import Context
from exfm_plugin.pipeline.params import bars_params, load_feature_map
from exfm_plugin.pipeline.prep_steps import prepare_data

HISTORIES = ("cate_his", "brand_his", "btag_his")


@pytest.fixture(scope="module")
def ctx_prep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gap")
    path = tmp / "g.yaml"
    path.write_text(yaml.safe_dump({"grid": "g", "dataset": "taobaoad", "size": 6000, "seeds": 1,
                                    "model_overrides": {"all": {"embedding_dim": 4}},
                                    "tuner_space": {"teacher": "DCN", "student": "FM", "method": "none"}}))
    ctx = Context(load_grid(str(path)), ArtifactStore(tmp / "artifacts"), progress=False)
    return ctx, prepare_data(ctx)


def test_a_vm_without_the_histories_is_built_on_the_other_features(ctx_prep, tmp_path):
    ctx, prep = ctx_prep
    full = load_feature_map(prep, bars_params(ctx.grid, prep, "FM", 0))
    params = bars_params(ctx.grid, prep, "FM", 0, drop_features=HISTORIES)
    fmap = load_feature_map(prep, params)
    assert set(full.features) - set(fmap.features) == set(HISTORIES)
    assert fmap.num_fields == full.num_fields - len(HISTORIES)
    model = build_model(dict(params, model_root=str(tmp_path), gpu=-1), fmap)
    tables = {name for m in model.modules() if isinstance(m, FeatureEmbeddingDict) for name in m.embedding_layers}
    assert tables and not tables & set(HISTORIES)


@pytest.mark.parametrize("drop, message", [
    (("cate_id",), "whose embedding 'cate_his' shares"),
    (("not_a_feature",), "does not have"),
])
def test_an_inconsistent_drop_is_refused(ctx_prep, drop, message):
    ctx, prep = ctx_prep
    with pytest.raises(ValueError, match=message):
        bars_params(ctx.grid, prep, "FM", 0, drop_features=drop)
