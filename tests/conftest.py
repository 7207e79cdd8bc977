import os

import pytest
import torch

# Tests share two cores with whatever else runs; one thread keeps them predictable.
torch.set_num_threads(int(os.environ.get("RANKADAPTOR_TEST_THREADS", "1")))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    """Tests marked ``gpu`` run only where CUDA is: skipped, with the reason, everywhere else."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (run benchmarks/gpu_check.sh on one)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tiny_model():
    from tests.tiny_models import tiny_llama

    return tiny_llama()


@pytest.fixture
def tiny_tok():
    from tests.tiny_models import tiny_tokenizer

    return tiny_tokenizer()
