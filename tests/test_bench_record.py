"""The header of benchmark records: reproducible command and config paths relative to the repo."""

from pathlib import Path

from omniplug.eval.bench_record import record_header


def test_record_header_paths_are_repo_relative(tmp_path, monkeypatch):
    script = tmp_path / "bench" / "x" / "run.py"
    script.parent.mkdir(parents=True)
    script.write_text("")
    monkeypatch.setattr("sys.argv", [str(script), "--repeats", "2"])
    header = record_header(repo=tmp_path, config=str(tmp_path / "configs" / "a.yaml"))
    assert header["command"] == "python bench/x/run.py --repeats 2"
    assert header["config"] == "configs/a.yaml"
    assert header["machine"]["torch_threads"] >= 1 and len(header["machine"]["load_average_at_end"]) == 3
    outside = record_header(repo=tmp_path / "repo", config="/elsewhere/b.yaml", argv=["--n", "1"])
    assert outside["config"] == "/elsewhere/b.yaml" and outside["command"].endswith("run.py --n 1")
    assert Path(outside["command"].split()[1]).is_absolute()
