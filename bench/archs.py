"""Random-init model configs for the speed benchmarks (`--arch`): the same shapes, other architectures.

    pretrained          the checkpoint itself (default: the packaged all-MiniLM-L6-v2), not random
    bert-base           BertConfig(): 12 layers, 768 wide, 12 heads, intermediate 3072
    minilm-bert         MiniLM-L6's shape (6 layers, 384 wide, 12 heads, intermediate 1536) as each architecture:
    minilm-roberta        RoBERTa (type_vocab_size 2: the MiniLM tokenizer gives the second text token type 1)
    minilm-distilbert     DistilBERT (no token types: both Trainers drop the tokenizer's token_type_ids)
    minilm-deberta-v2     DeBERTa-v2/v3 (DeBERTa-v3's attention: relative positions in 256 buckets, c2p + p2c)
    minilm-modernbert     ModernBERT (RoPE, GLU feed-forward of 2 x 1536, every third layer global; sdpa on CPU)

Every random-init model uses the MiniLM tokenizer (BERT's WordPiece): vocab_size its vocabulary, its pad,
[CLS] and [SEP] ids, and at least 512 + 2 positions (RoBERTa's positions start after the padding id). Their
weights are random: for speed only; their dev accuracy and F1 mean nothing.
"""

from __future__ import annotations

RANDOM_INIT = (
    "bert-base",
    "minilm-bert",
    "minilm-roberta",
    "minilm-distilbert",
    "minilm-deberta-v2",
    "minilm-modernbert",
)
ARCHS = ("pretrained", *RANDOM_INIT)
MINILM = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}
POSITIONS = 512 + 2


def tokenizer_ids(model_dir: str) -> dict[str, int]:
    """vocab_size and the special ids of the checkpoint's tokenizer, for the random-init configs."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    return {
        "vocab_size": len(tok),
        "pad_token_id": tok.pad_token_id,
        "bos_token_id": tok.cls_token_id,
        "eos_token_id": tok.sep_token_id,
        "cls_token_id": tok.cls_token_id,
        "sep_token_id": tok.sep_token_id,
    }


def arch_config(arch: str, model_dir: str, num_labels: int = 2):
    """The transformers config of a random-init `arch` (one of RANDOM_INIT), sized for the tokenizer at model_dir."""
    from transformers import BertConfig, DebertaV2Config, DistilBertConfig, ModernBertConfig, RobertaConfig

    if arch == "bert-base":  # as before: BertConfig()'s own vocabulary is the same WordPiece one
        return BertConfig(num_labels=num_labels)
    ids = tokenizer_ids(model_dir)
    common = {"num_labels": num_labels, "vocab_size": ids["vocab_size"], "pad_token_id": ids["pad_token_id"]}
    if arch == "minilm-bert":
        return BertConfig(**common, **MINILM, max_position_embeddings=POSITIONS)
    if arch == "minilm-roberta":
        return RobertaConfig(
            **common,
            **MINILM,
            max_position_embeddings=POSITIONS,
            type_vocab_size=2,
            bos_token_id=ids["bos_token_id"],
            eos_token_id=ids["eos_token_id"],
        )
    if arch == "minilm-distilbert":
        return DistilBertConfig(
            **common,
            dim=MINILM["hidden_size"],
            n_layers=MINILM["num_hidden_layers"],
            n_heads=MINILM["num_attention_heads"],
            hidden_dim=MINILM["intermediate_size"],
            max_position_embeddings=POSITIONS,
        )
    if arch == "minilm-deberta-v2":  # DeBERTa-v3-small's attention settings, MiniLM's shape
        return DebertaV2Config(
            **common,
            **MINILM,
            max_position_embeddings=POSITIONS,
            type_vocab_size=0,
            relative_attention=True,
            position_buckets=256,
            max_relative_positions=-1,
            pos_att_type=["p2c", "c2p"],
            position_biased_input=False,
            norm_rel_ebd="layer_norm",
            share_att_key=True,
            layer_norm_eps=1e-7,
        )
    if arch == "minilm-modernbert":
        return ModernBertConfig(
            **common,
            **MINILM,
            max_position_embeddings=POSITIONS,
            bos_token_id=ids["bos_token_id"],
            eos_token_id=ids["eos_token_id"],
            cls_token_id=ids["cls_token_id"],
            sep_token_id=ids["sep_token_id"],
        )
    raise ValueError(f"unknown arch {arch!r}: one of {', '.join(ARCHS)}")


def make_random_model(arch: str, model_dir: str, num_labels: int = 2):
    """A random-init sequence classifier of `arch`; sdpa attention where the architecture has it."""
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_config(arch_config(arch, model_dir, num_labels))


def matmul_shape(arch: str, model_dir: str) -> tuple[int, int, int]:
    """(weights of the model's linear layers, classifier output excluded; layers; hidden width).

    Built on the meta device (no memory, no init). For BERT this is the usual 12-layer count:
    layers x (4 h^2 + 2 h i) + h^2 (the pooler). Attention's extra products (DeBERTa's relative-position
    scores) are not counted: the useful-FLOPs figure is the same formula for every architecture.
    """
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    num_labels = 2
    if arch == "pretrained":
        config = AutoConfig.from_pretrained(model_dir, num_labels=num_labels)
    else:
        config = arch_config(arch, model_dir, num_labels)
    with torch.device("meta"):
        model = AutoModelForSequenceClassification.from_config(config)
    n = sum(
        m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features != num_labels
    )
    layers = getattr(config, "num_hidden_layers", None) or config.n_layers
    hidden = getattr(config, "hidden_size", None) or config.dim
    return n, layers, hidden
