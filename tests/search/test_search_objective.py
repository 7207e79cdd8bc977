import numpy as np
import pytest

from rankadaptor.search.objective import RecoverEvalObjective, SyntheticObjective
from rankadaptor.search.space import SearchSpace


def test_synthetic_objective_is_truth_plus_noise():
    space = SearchSpace(10, fixed_first=1, fixed_last=1)
    obj = SyntheticObjective(space, noise=0.01, seed=0, screen_noise=0.05)
    r = space.uniform()
    full = np.array([obj(r, seed=s) for s in range(200)])
    screen = np.array([obj(r, seed=s, fidelity="screen") for s in range(200)])
    assert abs(full.mean() - obj.truth(r)[0]) < 0.005
    assert 0.007 < full.std() < 0.013 and screen.std() > 3 * full.std()


@pytest.mark.slow  # ~15 s on the shared CPU: a real recover() run, on a tiny model
def test_real_objective_recovers_a_tiny_model_and_returns_held_out_loss(tmp_path):
    from tests.tiny_models import tiny_llama, tiny_tokenizer

    model_dir = tmp_path / "tiny"
    tiny_llama().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    text = tmp_path / "corpus.txt"
    text.write_text("\n\n".join(f"The quick brown fox {i} jumps over the lazy dog again and again." for i in range(60)))
    obj = RecoverEvalObjective(str(model_dir), target="loss", steps=2, data=str(text),
                               recovery_kwargs={"seq_len": 16, "batch_size": 2, "max_val": 4})
    assert obj.direction == "minimize"
    a = obj(np.array([8, 2, 4, 8]), seed=0)
    b = obj(np.array([8, 12, 12, 8]), seed=0)
    assert np.isfinite(a) and np.isfinite(b) and a > 0
