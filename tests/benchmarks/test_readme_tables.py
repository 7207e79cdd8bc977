"""README tables are generated from benchmarks/results/: a hand-edited number fails here (and in CI)."""

import shutil

import pytest

from tests.benchmarks import ROOT, load_benchmark


def _runner():
    return load_benchmark("readme_tables")


def test_repo_readme_matches_results():
    runner = _runner()
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "<!-- table:demo_quick -->" in readme
    assert runner.regenerate(readme) == readme, "README is out of date: run python benchmarks/readme_tables.py"
    assert runner.main(["--check"]) == 0


def test_hand_edited_number_fails_check_and_is_rewritten(tmp_path):
    runner = _runner()
    readme = tmp_path / "README.md"
    shutil.copyfile(ROOT / "README.md", readme)
    text = readme.read_text(encoding="utf-8")
    start = text.index("<!-- table:demo_quick -->")
    row = text.index("| LoRA r=8 (uniform) | ", start)
    cell = row + len("| LoRA r=8 (uniform) | ")
    edited = text[:cell] + "1" + text[cell + 1:]  # one digit of a parameter count changed by hand
    readme.write_text(edited, encoding="utf-8")
    assert runner.main(["--check", "--readme", str(readme)]) == 1
    assert runner.main(["--readme", str(readme)]) == 0
    assert readme.read_text(encoding="utf-8") == text
    assert runner.main(["--check", "--readme", str(readme)]) == 0


def test_block_carries_provenance_and_noise_verdicts():
    block = _runner().render("demo_quick")
    assert block.startswith("_Measured 20") and "commit `" in block and "CPUs" in block
    assert "significant" in block and "[" in block  # every difference with its paired interval and verdict
    assert "| RankAdaptor (searched plan, trained) |" in block and "| LoRA r=8 (uniform) |" in block


def test_unknown_or_unclosed_markers_are_refused(tmp_path):
    runner = _runner()
    with pytest.raises(SystemExit, match="no generator"):
        runner.regenerate("<!-- table:nope -->\nx\n<!-- /table:nope -->\n")
    with pytest.raises(SystemExit, match="closing marker"):
        runner.regenerate("<!-- table:demo_quick -->\nx\n")
    with pytest.raises(SystemExit, match="does not exist"):
        runner.render("demo_quick", tmp_path)
