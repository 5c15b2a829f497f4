"""The record schema v2 (contracts.records) accepts what the pipeline writes and refuses the rest."""
import json

import pytest
from report_records import CONSTANT, fm, vm, write, write_raw

from exfm_plugin.contracts import METHODS
from exfm_plugin.contracts.records import RECORD_VERSION, RecordError, validate_record
from exfm_plugin.report import load_records


def test_valid_records_keep_extra_keys_and_get_defaults():
    r = vm(method="ah_sa_frozen", extra_measure=3.5)
    del r["embedding_update"], r["feature_gap"]
    out = validate_record(r)
    assert out["embedding_update"] == "dense" and out["feature_gap"] == []
    assert out["extra_measure"] == 3.5 and out["constant"] == CONSTANT and out["record_version"] == RECORD_VERSION
    assert validate_record(fm())["method"] is None
    for method in METHODS:
        assert validate_record(vm(method=method))["method"] == method
    failed = vm(status="failed", error="RuntimeError: boom")
    for k in ("metrics", "constant", "ne_base_rate", "train_rows"):
        del failed[k]
    assert validate_record(failed)["status"] == "failed"


@pytest.mark.parametrize("change, message", [
    ({"kind": "teacher"}, r"kind must be 'vm' or 'fm', got 'teacher'"),
    ({"method": "ah_sa_v2"}, r"method: method must be one of .*got 'ah_sa_v2'"),
    ({"metrics": None}, r"an ok vm record needs metrics"),
    ({"metrics": {"AUC": 0.6, "logloss": 0.2}}, r"metrics\.NE: Field required"),
    ({"metrics": {"AUC": float("nan"), "logloss": 0.2, "NE": 1.0}}, r"metrics\.AUC: .*finite"),
    ({"metrics": {"AUC": "0.6", "logloss": 0.2, "NE": 1.0}}, r"metrics\.AUC: .*valid number"),
    ({"constant": None}, r"needs constant"),
    ({"ne_base_rate": 1.5}, r"ne_base_rate: .*less than 1"),
    ({"vm_schedule": "weekly"}, r"vm_schedule: .*'day' or 'stream'"),
    ({"embedding_update": "lazy"}, r"embedding_update"),
    ({"seed": True}, r"seed: .*valid integer"),
    ({"status": "failed"}, r"a failed record needs a non-empty 'error'"),
    ({"record_version": 1}, r"record_version 1 is not supported: this reads version 2"),
])
def test_schema_refuses_bad_records(change, message):
    with pytest.raises(RecordError, match=message):
        validate_record(vm(**change))


def test_fm_record_without_vm_fields():
    with pytest.raises(RecordError, match=r"method: Input should be None"):
        validate_record(fm(method="kd"))
    r = vm()
    del r["student"]
    with pytest.raises(RecordError, match=r"student: Field required"):
        validate_record(r)


def test_report_refuses_bad_lines_naming_file_line_and_version(tmp_path):
    path = write_raw(tmp_path / "r.jsonl", [vm(), vm(method="bad")])
    with pytest.raises(RecordError, match=r"r\.jsonl:2: cell c\d+ \(vm\): method"):
        load_records(path)
    old = write_raw(tmp_path / "v1.jsonl", [vm(), vm(record_version=1)])
    with pytest.raises(RecordError, match=r"v1\.jsonl:2: .*record_version 1 is not supported: this reads version 2"):
        load_records(old)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(json.dumps(vm()) + "\n{not json\n" + json.dumps(vm()) + "\n")
    with pytest.raises(RecordError, match=r"broken\.jsonl:2: not valid JSON"):
        load_records(broken)
    torn = tmp_path / "torn.jsonl"
    torn.write_text(json.dumps(vm()) + "\n" + json.dumps(vm())[:40])  # a run killed mid-append
    assert load_records(torn).height == 1


def test_last_record_of_a_cell_wins(tmp_path):
    a = write(tmp_path / "a.jsonl", [vm(0.10, cell_id="same"), vm(0.62, cell_id="other", seed=1)])
    b = write(tmp_path / "b.jsonl", [vm(0.60, cell_id="same")])
    df = load_records([a, b])
    assert sorted(df["AUC"].to_list()) == [0.60, 0.62]
    assert df.filter(df["cell_id"] == "same")["constant_logloss"].to_list() == [CONSTANT["logloss"]]
