import os

import pytest
import torch

# Tests share two cores with whatever else runs; one thread keeps them predictable.
torch.set_num_threads(int(os.environ.get("RANKADAPTOR_TEST_THREADS", "1")))
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny_model():
    from tests.tiny_models import tiny_llama

    return tiny_llama()


@pytest.fixture
def tiny_tok():
    from tests.tiny_models import tiny_tokenizer

    return tiny_tokenizer()
