import numpy as np

from rankadaptor.report import figures


def test_rank_grid_places_each_module_at_its_layer_and_column():
    grid = figures.rank_grid({"model.layers.0.self_attn.q_proj": 4, "model.layers.2.mlp.down_proj": 12,
                              "model.layers.9.mlp.up_proj": 3, "lm_head": 5}, n_layers=3)
    expected = np.zeros((3, 7))
    expected[0, 0], expected[2, 6] = 4, 12
    assert np.array_equal(grid, expected)  # layer 9 is outside, lm_head is no target


def test_every_figure_writes_a_png(tmp_path):
    alloc = {"uniform": {f"model.layers.{i}.mlp.up_proj": 8 for i in range(4)},
             "searched": {f"model.layers.{i}.self_attn.v_proj": 2 * i for i in range(4)}}
    paths = [
        figures.rank_heatmaps(alloc, 4, tmp_path / "a.png"),
        figures.loss_curves({"uniform": [[(4, 5.0), (8, 4.8)], [(4, 5.1), (8, 4.7)]]}, tmp_path / "b.png"),
        figures.params_vs_perplexity({"uniform": {"params": 100, "ppl": 50.0, "ppl_low": 49.0, "ppl_high": 51.0},
                                      "lora-star": {"params": 98, "ppl": 51.0}}, tmp_path / "c.png", budget=100),
        figures.search_history({"super": [(0.5, 5.2), (1.0, 5.1)], "real": [(60.0, 5.0)]}, tmp_path / "d.png"),
    ]
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
