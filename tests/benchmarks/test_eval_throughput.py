"""benchmarks/eval_throughput.py's work counter: decoder tokens and LM-head rows, and the FLOPs they imply."""

import torch

from tests.benchmarks import load_benchmark
from tests.tiny_models import tiny_llama


def test_work_counter_counts_decoder_tokens_and_head_rows_of_both_paths():
    model = tiny_llama().eval()
    counter = load_benchmark("eval_throughput").WorkCounter(model)
    ids = torch.randint(0, 100, (2, 5))
    with torch.no_grad():
        model(input_ids=ids)  # lm-eval's path: every position through the head
        assert counter.take()["head_rows"] == 10
        hidden = model.get_decoder()(input_ids=ids).last_hidden_state  # the fast scorer's: chosen rows only
        model.get_output_embeddings()(hidden[[0, 1, 1], [4, 2, 4]])
    work = counter.take()
    assert (work["tokens"], work["head_rows"]) == (10, 3)
    embed = model.get_input_embeddings().weight.numel()
    body = sum(p.numel() for p in model.get_decoder().parameters()) - embed
    head = model.get_output_embeddings().weight.numel()
    assert abs(work["gflops"] - 2 * (10 * body + 3 * head) / 1e9) < 1e-12
    counter.close()
    with torch.no_grad():
        model(input_ids=ids)
    assert counter.take()["tokens"] == 0  # closed: the hooks are gone
