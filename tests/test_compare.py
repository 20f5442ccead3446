"""`dreamlet compare`: several runs' reports in one table and one plot."""
import json

from PIL import Image

from dreamlet.cli import main


def fake_run(root, name, minutes, seen, pair, clip=None):
    run = root / name
    (run / "model").mkdir(parents=True)
    (run / "train_log.csv").write_text(f"step,loss,lr,images_per_s,elapsed_s\n10,0.1,0.001,80,{60 * minutes}\n")
    judge = {"seen": seen, "heldout": seen - 0.1, "pair": pair, "steps": 20, "model": str(run / "model")}
    report = judge if clip is None else {"model": str(run / "model"), "steps": 20, "judge": judge,
                                         "r_precision": clip, "clip_score": 80.0, "fid": 12.5}
    (run / "eval.json").write_text(json.dumps(report))
    return run


def test_compare_writes_a_table_and_a_plot(tmp_path, capsys):
    runs = [fake_run(tmp_path, "a", 2, 0.5, 0.0), fake_run(tmp_path, "b", 10, 0.9, 0.1, clip=0.875)]
    out = tmp_path / "cmp"
    assert main(["compare", *map(str, runs), "--out", str(out)]) == 0
    table = (tmp_path / "cmp.md").read_text().splitlines()
    assert table[0].startswith("| run | training min | sampling steps | seen single |")
    assert "| 2.0 | 20 | 50.0 % | 40.0 % | 0.0 % | - |" in table[2]
    assert "| 10.0 | 20 | 90.0 % | 80.0 % | 10.0 % | 0.875 | 80.0 | 12.5 |" in table[3]
    assert Image.open(tmp_path / "cmp.png").size[0] > 500
    assert main(["compare", str(tmp_path / "nothing-here")]) == 2
    assert "no eval report" in capsys.readouterr().err
