"""Tree attention ("tree" on CPU): equal to dense-mask attention and to per-path forwards.

Checked at three levels: the attention function against sdpa with the dense tree mask (outputs
and gradients, random trees with empty segments and one-token leaves, several tile sizes); the
whole packed forward of eager, sdpa and tree models against per-path forwards (whole packs and
sub-packs); and a 2-layer model with sharp logits (std >= 2), where packed and per-path
logprobs and the gradients of the packed update and the paths baseline must agree.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_training_packing import (
    assert_packed_equals_per_path,
    hand_tree,
    longest_path_tokens,
    make_tree,
    random_trees,
)

from treerpo.engines import tree_attention as tree_attention_module
from treerpo.engines.loading import load_policy, resolve_attn_implementation
from treerpo.engines.tree_attention import (
    register_tree_attention,
    tree_attention,
    tree_attention_layout,
)
from treerpo.errors import BadInputError
from treerpo.scoring.values import apply_scores
from treerpo.tiny_model import build_random_model, build_tokenizer
from treerpo.training.naive import naive_tree_loss, naive_tree_update
from treerpo.training.packed_forward import packed_tree_loss
from treerpo.training.packing import dense_attention_mask, pack_tree
from treerpo.training.paths_replay import micro_batches, path_rows, paths_update

SHARP_TOLERANCE = 2e-5


def _layout(pack, **kwargs):
    return tree_attention_layout(segment_ids=pack.segment_ids,
                                 ancestor_or_self=pack.ancestor_or_self, **kwargs)


@pytest.fixture(scope="module")
def tree_model(tiny_model_dir):
    return load_policy(str(tiny_model_dir), torch_dtype="float32", device="cpu",
                       attn_implementation="tree")


@pytest.fixture(scope="module")
def eager_model(tiny_model_dir):
    return load_policy(str(tiny_model_dir), torch_dtype="float32", device="cpu",
                       attn_implementation="eager")


# --- the attention function against the dense mask ----------------------------------------


@settings(max_examples=60, deadline=None)
@given(tree=random_trees(vocab_size=50, max_nodes=12, max_segment=9),
       tile_size=st.sampled_from([1, 2, 3, 128]), bucket_ratio=st.sampled_from([0.5, 1.0]),
       seed=st.integers(0, 2**16))
def test_tree_attention_equals_dense_mask_attention(tree, tile_size, bucket_ratio, seed):
    (pack,) = pack_tree(tree=tree, max_packed_tokens=None)
    length = pack.num_tokens
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(1, 4, length, 8, generator=generator, dtype=torch.float64)
    key = torch.randn(1, 2, length, 8, generator=generator, dtype=torch.float64)
    value = torch.randn(1, 2, length, 8, generator=generator, dtype=torch.float64)
    for tensor in (query, key, value):
        tensor.requires_grad_(True)
    layout = _layout(pack, tile_size=tile_size, bucket_ratio=bucket_ratio)
    got = tree_attention(query=query, key=key, value=value, layout=layout, scaling=0.3)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query, key.repeat_interleave(2, dim=1), value.repeat_interleave(2, dim=1),
        attn_mask=dense_attention_mask(pack=pack), scale=0.3).transpose(1, 2)  # (1, L, H, D)
    assert got.shape == expected.shape == (1, length, 4, 8)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    upstream = torch.randn(expected.shape, generator=generator, dtype=torch.float64)
    got_grads = torch.autograd.grad((got * upstream).sum(), (query, key, value))
    expected_grads = torch.autograd.grad((expected * upstream).sum(), (query, key, value))
    for got_grad, expected_grad in zip(got_grads, expected_grads, strict=True):
        torch.testing.assert_close(got_grad, expected_grad, rtol=0, atol=1e-10)
    # Only what the tree lets a token see is computed (plus bounded padding).
    assert layout.visible_pairs == int(dense_attention_mask(pack=pack).sum())
    assert layout.visible_pairs <= layout.attended_pairs


def test_tree_attention_skips_other_branches():
    """A bushy tree: the tiles attend to far fewer pairs than the dense L x L mask holds."""
    tree = make_tree(parents=[None] + [0] * 8,
                     token_ids=[list(range(4))] + [list(range(30))] * 8)
    (pack,) = pack_tree(tree=tree, max_packed_tokens=None)
    layout = _layout(pack, tile_size=8, bucket_ratio=0.8)
    assert layout.attended_pairs < 0.25 * pack.num_tokens ** 2
    assert layout.attended_pairs <= 1.5 * layout.visible_pairs


def test_layout_arguments_are_checked():
    (pack,) = pack_tree(tree=hand_tree(), max_packed_tokens=None)
    with pytest.raises(ValueError, match="tile_size"):
        _layout(pack, tile_size=0)
    with pytest.raises(ValueError, match="bucket_ratio"):
        _layout(pack, bucket_ratio=0.0)


# --- the packed forward of each implementation against per-path forwards -------------------


def test_tree_model_is_loaded_and_used(tree_model, monkeypatch):
    assert tree_model.config._attn_implementation == "tree"
    calls = []
    original = tree_attention_module.tree_attention

    def spy(**kwargs):
        calls.append(kwargs["layout"].num_tokens)
        return original(**kwargs)

    monkeypatch.setattr(tree_attention_module, "tree_attention", spy)
    checked = assert_packed_equals_per_path(model=tree_model, tree=hand_tree(),
                                            max_packed_tokens=None)
    assert checked == 7
    assert calls == [10] * tree_model.config.num_hidden_layers


def test_tree_model_without_a_layout_is_sdpa(tree_model, tiny_model_dir):
    """Generation and plain forwards (no `tree_layout`) fall back to sdpa, padding included."""
    sdpa = load_policy(str(tiny_model_dir), torch_dtype="float32", device="cpu",
                       attn_implementation="sdpa")
    input_ids = torch.tensor([[5, 6, 7, 8], [9, 10, 0, 0]])
    attention_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    with torch.no_grad():
        got = tree_model(input_ids=input_ids, attention_mask=attention_mask).logits
        expected = sdpa(input_ids=input_ids, attention_mask=attention_mask).logits
    torch.testing.assert_close(got[0], expected[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(got[1, :2], expected[1, :2], rtol=0, atol=1e-6)


@pytest.mark.parametrize("implementation", ["tree", "eager"])
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_packed_equals_per_path_for_each_implementation(implementation, tree_model, eager_model,
                                                        data):
    """sdpa is covered in test_training_packing; sub-packs when the draw asks for them."""
    model = tree_model if implementation == "tree" else eager_model
    tree = data.draw(random_trees(vocab_size=model.config.vocab_size, max_nodes=12))
    limit = data.draw(st.one_of(st.none(), st.integers(0, 6).map(
        lambda extra: longest_path_tokens(tree) + extra)))
    assert_packed_equals_per_path(model=model, tree=tree, max_packed_tokens=limit)


def test_empty_segments_and_one_token_leaves(tree_model):
    tree = make_tree(parents=[None, 0, 1, 1, 0, 4, 4, 2],
                     token_ids=[[1, 2], [], [3], [4, 5], [6], [], [7], [8]])
    for limit in (None, 4):
        assert_packed_equals_per_path(model=tree_model, tree=tree, max_packed_tokens=limit)


# --- a model with sharp logits: logprobs and gradients --------------------------------------


def _sharp_model(*, seed: int = 0):
    register_tree_attention()
    tokenizer = build_tokenizer()
    model = build_random_model(tokenizer, hidden_size=64, num_layers=2, num_heads=4,
                               num_kv_heads=2, intermediate_size=176, vocab_size=600, seed=seed)
    with torch.no_grad():
        model.model.norm.weight.mul_(16.0)
    return model


def _scored_tree(*, rng: np.random.Generator, vocab_size: int):
    from treerpo.bench.synthetic import synthetic_tree

    tree = synthetic_tree(rng=rng, num_nodes=14, prompt_len=30, segment_len=24,
                          vocab_size=vocab_size)
    tree.nodes[3].token_ids = tree.nodes[3].token_ids[:1]  # a one-token segment
    tree.nodes[3].logprobs = tree.nodes[3].logprobs[:1]
    apply_scores(tree, {leaf.index: float(rng.random() < 0.5) for leaf in tree.leaves()})
    return tree


def _gradient(model, update) -> torch.Tensor:
    model.zero_grad(set_to_none=True)
    update()
    gradient = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    model.zero_grad(set_to_none=True)
    return gradient.double()


def test_sharp_model_packed_equals_per_path_and_gradients_agree():
    model = _sharp_model()
    rng = np.random.default_rng(3)
    trees = [_scored_tree(rng=rng, vocab_size=600) for _ in range(2)]
    with torch.no_grad():
        logits = model(input_ids=torch.from_numpy(trees[0].nodes[1].token_ids[None].astype(
            np.int64))).logits
    assert float(logits.std()) >= 2.0  # non-degenerate logits: differences would show
    model.config._attn_implementation = "tree"
    for tree in trees:
        for limit in (None, longest_path_tokens(tree)):
            assert_packed_equals_per_path_sharp(model=model, tree=tree, max_packed_tokens=limit)

    def packed():
        packed_tree_loss(model=model, trees=trees)[0].backward()

    reference = _gradient(model, lambda: naive_tree_loss(model=model, trees=trees)[0].backward())
    for update in (packed, lambda: paths_update(model=model, trees=trees),
                   lambda: paths_update(model=model, trees=trees, max_batch_tokens=200),
                   lambda: naive_tree_update(model=model, trees=trees)):
        gradient = _gradient(model, update)
        cosine = torch.nn.functional.cosine_similarity(gradient, reference, dim=0)
        assert cosine >= 0.9999
        assert torch.allclose(gradient, reference, rtol=1e-3, atol=1e-6)


def assert_packed_equals_per_path_sharp(*, model, tree, max_packed_tokens):
    """Like `assert_packed_equals_per_path`, at the sharp model's tolerance."""
    from treerpo.training.naive import naive_token_logprobs
    from treerpo.training.packed_forward import packed_token_logprobs

    packs = pack_tree(tree=tree, max_packed_tokens=max_packed_tokens)
    with torch.no_grad():
        packed = packed_token_logprobs(model=model, packs=packs)
        per_path = naive_token_logprobs(model=model, tree=tree)
    worst = 0.0
    for pack, logprobs in zip(packs, packed, strict=True):
        expected = torch.stack([per_path[n][o] for n, o in zip(
            pack.trained_nodes.tolist(), pack.trained_offsets.tolist(), strict=True)])
        worst = max(worst, float((logprobs - expected).abs().max()))
    assert worst <= SHARP_TOLERANCE


def test_the_sharp_check_can_fail():
    """Guard: on the sharp model, attending one token too far (a sibling's) moves logprobs by far
    more than the tolerance."""
    model = _sharp_model()
    model.config._attn_implementation = "sdpa"
    tree = make_tree(parents=[None, 0, 0], token_ids=[[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    (pack,) = pack_tree(tree=tree, max_packed_tokens=None)
    mask = dense_attention_mask(pack=pack)
    leaky = mask.clone()
    leaky[0, 0, 6:, 3:6] = True  # the second child sees the first
    with torch.no_grad():
        def logprobs(attention_mask):
            logits = model(input_ids=pack.input_ids[None], position_ids=pack.position_ids[None],
                           attention_mask=attention_mask).logits[0].float()
            return torch.log_softmax(logits, -1)[pack.predictor_indices,
                                                 pack.input_ids[pack.trained_token_indices]]
        assert (logprobs(leaky) - logprobs(mask)).abs().max() > 100 * SHARP_TOLERANCE


# --- the paths baseline and the attention flag ---------------------------------------------


def test_paths_train_each_token_once_and_bucket_by_length():
    tree = hand_tree()
    apply_scores(tree, {leaf.index: float(leaf.index % 2) for leaf in tree.leaves()})
    rows = path_rows(trees=[tree])
    assert [len(row.input_ids) for row in rows] == [4, 8, 6]  # root+B, root+A+C, root+A+D
    trained = sorted((int(n), int(o)) for row in rows for n, o in zip(row.nodes, row.offsets,
                                                                       strict=True))
    assert trained == sorted({(1, 0), (1, 1), (3, 0), (3, 1), (3, 2), (4, 0), (2, 0)})
    assert rows[2].predictor_positions.tolist() == [4]  # D's token, after root + A
    assert rows[2].nodes.tolist() == [4]  # A was trained on the row before
    assert micro_batches(rows=rows, max_batch_tokens=None) == [[0, 1, 2]]
    assert micro_batches(rows=rows, max_batch_tokens=16) == [[1, 2], [0]]
    assert micro_batches(rows=rows, max_batch_tokens=1) == [[1], [2], [0]]


def test_attention_implementation_resolution():
    assert resolve_attn_implementation("auto", device="cpu", training=True) == "tree"
    assert resolve_attn_implementation("auto", device="cpu", training=False) == "sdpa"
    assert resolve_attn_implementation("eager", device="cpu", training=True) == "eager"
    with pytest.raises(BadInputError, match="CUDA"):
        resolve_attn_implementation("flex_attention", device="cpu", training=True)
    with pytest.raises(BadInputError, match="unknown attention"):
        resolve_attn_implementation("flash", device="cpu", training=True)


@settings(max_examples=10, deadline=None)
@given(tree=random_trees(vocab_size=50, max_nodes=10, max_segment=40))
def test_flex_attention_with_the_tree_block_mask_equals_dense_attention(tree):
    """The GPU path's BlockMask through torch's real FlexAttention API, run forward-only on CPU
    (uncompiled: FlexAttention has no CPU backward, and compiling it on CPU takes minutes)."""
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    from treerpo.training.packed_forward import _flex_block_mask

    (pack,) = pack_tree(tree=tree, max_packed_tokens=None)
    length = pack.num_tokens
    generator = torch.Generator().manual_seed(length)
    query, key, value = (torch.randn(1, 2, length, 8, generator=generator) for _ in range(3))
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = flex_attention(query, key, value, block_mask=_flex_block_mask(pack=pack,
                                                                            device="cpu"))
        expected = torch.nn.functional.scaled_dot_product_attention(
            query, key, value, attn_mask=dense_attention_mask(pack=pack))
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention path: CUDA only")
@pytest.mark.parametrize("implementation", ["flex_attention", "tree"])
def test_sharp_model_gradients_on_cuda(implementation):
    """On a GPU (scripts/gpu_check.sh): packed logprobs and gradients with FlexAttention's
    block-sparse tree mask (and the tree attention) equal the paths baseline's."""
    model = _sharp_model().to("cuda")
    rng = np.random.default_rng(5)
    trees = [_scored_tree(rng=rng, vocab_size=600) for _ in range(2)]
    model.config._attn_implementation = implementation
    for tree in trees:
        assert_packed_equals_per_path_sharp(model=model, tree=tree, max_packed_tokens=None)

    def packed():
        packed_tree_loss(model=model, trees=trees)[0].backward()

    model.config._attn_implementation = "sdpa"
    reference = _gradient(model, lambda: paths_update(model=model, trees=trees))
    model.config._attn_implementation = implementation
    cosine = torch.nn.functional.cosine_similarity(_gradient(model, packed), reference, dim=0)
    assert cosine >= 0.9999


def test_a_model_that_drops_the_layout_is_refused_not_run_unmasked(tree_model):
    """The placeholder mask without a `tree_layout` (a model whose code does not pass keyword
    arguments down) raises instead of attending to everything."""
    from treerpo.engines.tree_attention import (
        _tree_attention_forward,
        is_tree_placeholder,
        tree_placeholder_mask,
    )

    placeholder = tree_placeholder_mask(length=5, device="cpu")
    assert is_tree_placeholder(placeholder)
    assert not is_tree_placeholder(torch.ones(1, 1, 5, 5, dtype=torch.bool).tril())
    attention = tree_model.model.layers[0].self_attn
    states = torch.zeros(1, 4, 5, 8)
    with pytest.raises(ValueError, match="did not hand the `tree_layout`"):
        _tree_attention_forward(attention, states, states[:, :2], states[:, :2], placeholder)
