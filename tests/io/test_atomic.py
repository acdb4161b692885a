import pytest

from cryodomain.io.atomic import atomic_output


def test_atomic_output_replaces_target_only_on_success(tmp_path):
    target = tmp_path / "out" / "result.txt"
    with atomic_output(target) as tmp:
        tmp.write_text("first")
    assert target.read_text() == "first"

    with pytest.raises(RuntimeError):
        with atomic_output(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("killed")
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["result.txt"]


def test_temporary_name_keeps_the_suffix(tmp_path):
    with atomic_output(tmp_path / "model.cif.gz") as tmp:
        assert tmp.name.endswith(".cif.gz")
        tmp.write_text("x")
