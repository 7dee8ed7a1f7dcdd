from saeuron_core import minicanvas as mc
from saeuron_core.minicanvas.tokenizer import PROMPT_WORDS, write_tokenizer


def test_every_prompt_word_is_one_token_and_any_text_tokenizes(tmp_path):
    tok = write_tokenizer(tmp_path)
    for word in PROMPT_WORDS:
        assert len(tok(word, add_special_tokens=False).input_ids) == 1, word
    ids = tok(mc.prompt("heart", "checkerboard")).input_ids
    assert len(ids) == 10  # bos + 8 words/punctuation + eos
    unknown = tok("a zebra in Van Gogh style!", add_special_tokens=False).input_ids
    assert tok.unk_token_id not in unknown
    assert tok.decode(unknown).replace(" ", "") == "azebrainvangoghstyle!"


def test_saved_tokenizer_reloads_identically(tmp_path):
    from transformers import CLIPTokenizer

    tok = write_tokenizer(tmp_path)
    again = CLIPTokenizer.from_pretrained(tmp_path)
    text = mc.prompt("star", "dots")
    assert tok(text).input_ids == again(text).input_ids
    assert again.model_max_length == 16
