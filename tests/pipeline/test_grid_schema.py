"""Grid files as FuxiCTR tuner files: hyperparameter crossing, key checks with close matches,
YAML/type errors naming the file and key, shipped grids addressable by name."""
import inspect
import os

import pytest
import yaml

from exfm_plugin.errors import ExfmInputError
from exfm_plugin.models import MODEL_REGISTRY
from exfm_plugin.pipeline.grid import GridError, expand_cells, load_grid, model_params
from exfm_plugin.pipeline.model_keys import known_keys
from exfm_plugin.resources import grid_names


def write(tmp_path, text: str) -> str:
    path = tmp_path / "g.yaml"
    path.write_text(text)
    return str(path)


def grid_text(**fields) -> str:
    grid = {"grid": "g", "dataset": "taobaoad", "size": "tiny", "seeds": 1,
            "tuner_space": {"teacher": "DCN", "student": "DeepFM", "method": ["none", "ah"]}}
    grid.update(fields)
    return yaml.safe_dump(grid)


def test_tuner_space_crosses_student_hyperparameters(tmp_path):
    space = {"teacher": "DCN", "student": "DeepFM", "method": ["none", "ah"],
             "embedding_dim": [8, 16], "hidden_units": [[32], [64, 32]]}
    grid = load_grid(write(tmp_path, grid_text(tuner_space=space)))
    cells = expand_cells(grid)
    assert len(cells) == 2 * 2 * 2  # methods x embedding_dim x hidden_units
    combos = {(c.method, dict(c.hparams)["embedding_dim"], dict(c.hparams)["hidden_units"]) for c in cells}
    assert combos == {(m, e, h) for m in ("none", "ah") for e in (8, 16) for h in ((32,), (64, 32))}
    # a cell's hyperparameters land in the model's params as YAML wrote them (lists, not tuples)
    cell = next(c for c in cells if dict(c.hparams)["hidden_units"] == (64, 32))
    params = model_params(grid, "DeepFM", {"embedding_dim": 32, "hidden_units": [1000]}, dict(cell.hparams))
    assert params["hidden_units"] == [64, 32] and params["embedding_dim"] in (8, 16)


def test_cells_without_hyperparameters_keep_their_ids(tmp_path):
    """The id of a cell hashes ``hparams`` only when set: existing grids keep their ids."""
    from exfm_plugin.pipeline.jobs import cell_id

    grid = load_grid(write(tmp_path, grid_text()))
    plain = expand_cells(grid)[0]
    assert "hparams" not in plain.identity and plain.hparams == ()
    tuned = load_grid(write(tmp_path, grid_text(tuner_space={"teacher": "DCN", "student": "DeepFM",
                                                             "method": "none", "embedding_dim": [8, 16]})))
    ids = {cell_id(tuned, c) for c in expand_cells(tuned)}
    assert len(ids) == 2 and cell_id(grid, plain) not in ids


@pytest.mark.parametrize("overrides, bad, suggestion", [
    ({"DeepFM": {"hiden_units": [8]}}, "hiden_units", "hidden_units"),
    ({"DMIN": {"dnn_hiden_units": [8]}}, "dnn_hiden_units", "dnn_hidden_units"),
    ({"all": {"learnin_rate": 1.0e-3}}, "learnin_rate", "learning_rate"),
])
def test_override_typos_are_refused_with_close_matches(tmp_path, overrides, bad, suggestion):
    space = {"teacher": "DMIN", "student": "DeepFM", "method": "none"}
    with pytest.raises(GridError, match=rf"g\.yaml.*'{bad}' \(did you mean '{suggestion}'"):
        load_grid(write(tmp_path, grid_text(model_overrides=overrides, tuner_space=space)))


def test_a_hyperparameter_of_another_model_is_refused_for_this_student(tmp_path):
    # DMIN's attention units are not a DeepFM constructor argument nor a Base key
    space = {"teacher": "DMIN", "student": "DeepFM", "method": "none", "attention_hidden_units": [[8]]}
    with pytest.raises(GridError, match="unknown tuner_space key.*attention_hidden_units.*DeepFM"):
        load_grid(write(tmp_path, grid_text(tuner_space=space)))


def test_known_keys_cover_the_constructor_and_fuxictr_base_keys():
    for name, cls in MODEL_REGISTRY.items():
        ctor = {n for n in inspect.signature(cls.__init__).parameters if n not in ("self", "feature_map", "kwargs")}
        assert ctor <= known_keys(name), name
        assert {"batch_size", "optimizer", "epochs", "early_stop_patience", "embedding_regularizer"} <= known_keys(name)


@pytest.mark.parametrize("text, where", [
    ("dataset: taobaoad\ntuner_space:\n\tteacher: DCN\n", "tabs"),
    ("dataset: [taobaoad\n", r"line \d+ column \d+: not valid YAML"),
    (grid_text(fm_epochs="2"), "fm_epochs"),
    (grid_text(world={"drift": "strong"}), "drift='strong'"),
    (grid_text(world={"domain_shift": -1.0}), "domain_shift=-1.0 must be >= 0"),
    (grid_text(world={"shift": 1.0}), "shift"),
    (grid_text(dataset="amazon", world={"domain_shift": 1.0}), "domain_shift=1.0 is defined for taobaoad"),
    (grid_text(rounds="0"), "round"),
    (grid_text(tuner_space={"teacher": "DCN", "student": "FM", "method": "ah", "label_scale": "2"}), "label_scale"),
    (grid_text(model_overrides={"all": {"learning_rate": "1e-3"}},
               tuner_space={"teacher": "DCN", "student": "FM", "method": "none"}), "1.0e-3"),
    (grid_text(model_overrides={"FM": {"embedding_dim": "big"}},
               tuner_space={"teacher": "DCN", "student": "FM", "method": "none"}), "embedding_dim='big'"),
])
def test_bad_yaml_and_wrong_types_name_the_file_and_key(tmp_path, text, where):
    with pytest.raises(GridError, match=where) as info:
        load_grid(write(tmp_path, text))
    assert "g.yaml" in str(info.value)
    assert isinstance(info.value, ExfmInputError)


def test_shipped_grids_load_by_name():
    names = grid_names()
    assert {"table2", "table3", "smoke_table2", "fig12"} <= set(names)
    assert load_grid("table2").name == "table2"
    assert load_grid("smoke_table2.yaml").name == "smoke_table2"
    with pytest.raises(GridError, match="did you mean.*table2"):
        load_grid("tabel2")


def test_crossed_hyperparameters_reach_the_trained_students(tmp_path):
    """Each embedding_dim of the tuner_space trains its own student: the serving weights kept in
    the cell's artifact have that embedding width, and the record names its hyperparameters."""
    import torch

    from exfm_plugin.pipeline.records import read_records
    from exfm_plugin.pipeline.runner import run_grid

    text = yaml.safe_dump({"grid": "hp", "dataset": "taobaoad", "size": 6000, "seeds": 1,
                           "model_overrides": {"all": {"batch_size": 256}},
                           "tuner_space": {"teacher": "DCN", "student": "FM", "method": "none",
                                           "embedding_dim": [4, 8]}})
    summary = run_grid(load_grid(write(tmp_path, text)), str(tmp_path / "w"), str(tmp_path / "r"),
                       progress=False, follow=False)
    assert summary.failed == 0, summary.failures
    widths = {}
    records = read_records([summary.records_path])
    # one FM record too: the teacher margin is a premise of every pairing, `none`-only grids included
    assert sorted(r["kind"] for r in records) == ["fm", "vm", "vm"]
    for r in (r for r in records if r["kind"] == "vm"):
        state = torch.load(os.path.join(r["vm_artifact"], "serving_model.pt"))
        emb = next(v for k, v in state.items() if k.endswith("embedding_layers.userid.weight"))
        widths[r["hparams"]["embedding_dim"]] = emb.shape[1]
    assert widths == {4: 4, 8: 8}
