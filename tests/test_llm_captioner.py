"""The `llm` captioner, run end to end on a tiny randomly initialised Llama saved to disk.

A random model writes gibberish; these tests check the structure: one caption per
sample, the template's class sentence verbatim, determinism, option and loading errors.
"""

import json
import os

import pytest
from PIL import Image

import dermabench
from dermabench import RunContext, Sample
from dermabench.errors import DermabenchError
from dermabench_plugins.abcd_captioner import UNMEASURED, ABCDCaptioner
from dermabench_plugins.llm_captioner import LLMCaptioner
from dermabench_plugins.phantom import PhantomDataset

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PREFIX = "This photo depicts a {} lesion. Here's a description of the mole: "
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|start|>{{ m['role'] }}\n{{ m['content'] }}<|end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|start|>assistant\n{% endif %}"
)


def _tiny_model(folder, chat_template=True):
    """A 1-layer Llama (hidden size 32) and a byte-level tokenizer built without any files."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|begin|>", "<|end|>", "<|pad|>", "<|start|>"]
    vocab = {ch: i for i, ch in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    for token in specials:
        vocab[token] = len(vocab)
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<|begin|>", eos_token="<|end|>", pad_token="<|pad|>",
        additional_special_tokens=["<|start|>"],
    )  # fmt: skip
    if chat_template:
        tokenizer.chat_template = CHAT_TEMPLATE
    config = LlamaConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2, intermediate_size=64,
        vocab_size=len(vocab), max_position_embeddings=2048,
        bos_token_id=vocab["<|begin|>"], eos_token_id=vocab["<|end|>"], pad_token_id=vocab["<|pad|>"],
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    # like Llama-3.2-Instruct's generation_config.json: sampling by default (the captioner must override it)
    model.generation_config.do_sample, model.generation_config.temperature = True, 0.6
    model.generation_config.top_p = 0.9
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return _tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def samples():
    phantom = list(PhantomDataset(n=5, size=64, seed=0).samples())
    blank = Sample(image=Image.new("RGB", (64, 64), (228, 182, 160)), label=1, meta={"site": "back"})
    return [*phantom, blank]


def test_one_caption_per_sample_with_the_class_sentence_verbatim(tiny_model, samples):
    captions = LLMCaptioner(model=str(tiny_model), max_new_tokens="12", batch_size="4").caption(samples, RunContext())
    assert len(captions) == len(samples)
    for sample, caption in zip(samples, captions):
        prefix = PREFIX.format(dermabench.LABEL_NAMES[sample.label])
        assert caption.startswith(prefix)
        assert len(caption) > len(prefix)


def test_the_model_writes_the_measured_descriptions(tiny_model, samples):
    abcd = ABCDCaptioner().caption(samples, RunContext())
    llm = LLMCaptioner(model=str(tiny_model), max_new_tokens=5).caption(samples, RunContext())
    measured = [i for i, c in enumerate(abcd) if UNMEASURED not in c]
    assert len(measured) == 5
    for i in measured:  # the random model's reply replaced the findings: at most 5 byte tokens + "."
        description = llm[i].split("description of the mole: ", 1)[1]
        assert description != abcd[i].split("description of the mole: ", 1)[1]
        assert len(description) <= 6
    # an image whose outline could not be measured keeps the plain abcd caption (nothing to rephrase)
    assert llm[-1] == abcd[-1] == PREFIX.format("malignant") + f"{UNMEASURED}. Located on the back."


def test_deterministic(tiny_model, samples):
    first = LLMCaptioner(model=str(tiny_model), max_new_tokens=10, batch_size=3).caption(samples, RunContext())
    again = LLMCaptioner(model=str(tiny_model), max_new_tokens=10, batch_size=3).caption(samples, RunContext(seed=9))
    assert first == again


def test_tokenizer_without_chat_template(tmp_path, samples):
    folder = _tiny_model(tmp_path / "plain", chat_template=False)
    captioner = LLMCaptioner(model=str(folder), max_new_tokens=4)
    tokenizer, _ = captioner.load()
    text, templated = captioner.prompt(tokenizer, "findings")
    assert not templated and text.endswith("Description:")
    captions = captioner.caption(samples[:2], RunContext())
    for sample, caption in zip(samples[:2], captions):
        assert caption.startswith(PREFIX.format(dermabench.LABEL_NAMES[sample.label]))


def test_chat_template_is_used(tiny_model):
    captioner = LLMCaptioner(model=str(tiny_model))
    tokenizer, model = captioner.load()
    text, templated = captioner.prompt(tokenizer, "asymmetric in both axes.")
    assert templated
    assert text.startswith("<|begin|><|start|>system\nYou write captions")
    assert text.endswith("Findings: asymmetric in both axes.<|end|>\n<|start|>assistant\n")
    assert tokenizer.padding_side == "left" and not model.training


def test_progress_is_reported(tiny_model, samples):
    seen = []

    class Recorder(dermabench.Progress):
        def track(self, iterable, description, total=None):
            seen.append((description, total))
            yield from iterable

    captioner = LLMCaptioner(model=str(tiny_model), max_new_tokens=2, batch_size=2)
    captioner.caption(samples, RunContext(progress=Recorder()))
    assert seen == [("abcd: measuring lesions", 6), ("llm: rephrasing captions", 3)]  # 5 measured / batch 2


def test_missing_or_wrong_model_is_a_clear_error(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(DermabenchError, match=f"model folder '{missing}' does not exist"):
        LLMCaptioner(model=str(missing))  # checked when the captioner is made, before any measuring
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DermabenchError, match=f"'{empty}' is not a model folder"):
        LLMCaptioner(model=str(empty))
    afile = tmp_path / "weights.bin"
    afile.write_bytes(b"0")
    with pytest.raises(DermabenchError, match="is a file, not a model folder"):
        LLMCaptioner(model=str(afile))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(json.dumps({"model_type": "no-such-architecture"}))
    with pytest.raises(DermabenchError, match=f"could not load a causal LM from folder '{broken}'"):
        LLMCaptioner(model=str(broken)).load()
    with pytest.raises(DermabenchError, match="not in the local Hugging Face cache"):
        LLMCaptioner(model="nobody-has/this-model-xyz").load()


def test_option_errors(tiny_model):
    with pytest.raises(DermabenchError, match="needs a model: --captioner-opt model=PATH"):
        LLMCaptioner()
    with pytest.raises(DermabenchError, match="unknown option.*temperature"):
        LLMCaptioner(model=str(tiny_model), temperature="0.7")
    with pytest.raises(DermabenchError, match="max_new_tokens='many'"):
        LLMCaptioner(model=str(tiny_model), max_new_tokens="many")
    with pytest.raises(DermabenchError, match="batch_size='0' must be >= 1"):
        LLMCaptioner(model=str(tiny_model), batch_size="0")
    with pytest.raises(DermabenchError, match="dtype='int8'"):
        LLMCaptioner(model=str(tiny_model), dtype="int8")
    with pytest.raises(DermabenchError, match="captioner 'llm': option metadata='perhaps'"):
        LLMCaptioner(model=str(tiny_model), metadata="perhaps")


def test_registered_through_entry_point():
    from dermabench import plugins

    found = plugins.registered("captioner")
    assert found["llm"].cls is LLMCaptioner
