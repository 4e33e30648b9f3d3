"""Complete or clearly incomplete: what a killed run leaves behind is refused by the next reader."""

import json

import pytest

from llmkit.data.prepare import prepare
from llmkit.errors import DataError


def test_prepare_refuses_the_output_of_a_data_clean_run_that_did_not_finish(tmp_path, shakespeare_tokenizer):
    shakespeare_tokenizer.save(tmp_path / "tok")
    clean = tmp_path / "clean"
    (clean / "train").mkdir(parents=True)
    (clean / "train" / "part_00000.jsonl").write_text(json.dumps({"text": "some of the parts"}) + "\n")
    (clean / ".work").mkdir()  # a killed run: its work folder is left and its report never written
    for given in (clean, clean / "train"):
        with pytest.raises(DataError, match="did not finish"):
            prepare([given], tmp_path / "tok", tmp_path / "out")
    (clean / ".work").rmdir()
    (clean / "report").mkdir()
    (clean / "report" / "report.json").write_text("{}")
    assert prepare([clean / "train"], tmp_path / "tok", tmp_path / "out").documents == 1
