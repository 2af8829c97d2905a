"""Hugging Face transformers: xent.torch.causal_lm_loss as model.loss_function and in Trainer.

A tiny LlamaForCausalLM is built from a config (no download).
"""

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
import torch.nn.functional as F  # noqa: E402

import xent  # noqa: E402
import xent.torch as xt  # noqa: E402

V = 61


def _model(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=V, hidden_size=16, intermediate_size=32,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=2, max_position_embeddings=32)
    return transformers.LlamaForCausalLM(cfg)  # float32: transformers' loss is float32


def _batch(B=3, T=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    labels = ids.clone()
    labels[0, :3] = -100
    labels[1, -2:] = -100
    return ids, labels


def _loss_and_grads(model, ids, labels, **kw):
    model.zero_grad()
    out = model(input_ids=ids, labels=labels, **kw)
    out.loss.backward()
    return out.loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("num_items", [None, 11])
def test_loss_function_matches_transformers(num_items):
    model = _model()
    ids, labels = _batch()
    kw = {} if num_items is None else {"num_items_in_batch": torch.tensor(num_items)}
    ref, gref = _loss_and_grads(model, ids, labels, **kw)
    model.loss_function = xt.causal_lm_loss
    ours, gours = _loss_and_grads(model, ids, labels, **kw)
    assert ours.dtype == ref.dtype
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    for a, b in zip(gours, gref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_causal_lm_loss_float32_result_and_formula():
    logits = torch.randn(2, 5, V, dtype=torch.bfloat16)
    labels = torch.randint(0, V, (2, 5))
    labels[1, 3] = -100
    out = xt.causal_lm_loss(logits, labels, vocab_size=V)
    assert out.dtype == torch.float32
    z = logits.double()[:, :-1].reshape(-1, V)
    t = labels[:, 1:].reshape(-1)
    ref = F.cross_entropy(z, t, ignore_index=-100)
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    # shift_labels replaces the shift; extra kwargs (as transformers passes) are ignored
    sl = F.pad(labels, (0, 1), value=-100)[..., 1:]
    again = xt.causal_lm_loss(logits, None, V, shift_labels=sl, position_ids=None,
                              attention_mask=None)
    torch.testing.assert_close(again, out)


def test_causal_lm_loss_all_ignored_is_zero_and_options():
    logits = torch.randn(2, 4, V, requires_grad=True)
    labels = torch.full((2, 4), -100)
    for n in [None, torch.tensor(0), 0]:
        out = xt.causal_lm_loss(logits, labels, V, num_items_in_batch=n)
        assert out.item() == 0.0
        (g,) = torch.autograd.grad(out, logits)
        assert torch.all(g == 0)
    labels = torch.randint(0, V, (2, 4))
    zl = xt.causal_lm_loss(logits, labels, V, z_loss=1e-2)
    ref = xent.sparse_softmax_cross_entropy(logits[:, :-1].reshape(-1, V),
                                            labels[:, 1:].reshape(-1), z_loss=1e-2)
    torch.testing.assert_close(zl, ref)


def test_gradient_accumulation_uneven_micro_batches_equals_full_batch_mean():
    model = _model()
    model.loss_function = xt.causal_lm_loss
    ids, labels = _batch(B=5, T=6, seed=3)
    labels[4, :5] = -100
    full, gfull = _loss_and_grads(model, ids, labels)
    shifted = labels[:, 1:]
    n = (shifted != -100).sum()
    model.zero_grad()
    total = 0.0
    for sl in (slice(0, 1), slice(1, 4), slice(4, 5)):
        out = model(input_ids=ids[sl], labels=labels[sl], num_items_in_batch=n)
        out.loss.backward()
        total = total + out.loss.detach()
    torch.testing.assert_close(total, full, rtol=1e-5, atol=1e-6)
    for p, g in zip(model.parameters(), gfull):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)


def test_trainer_compute_loss_func_runs(tmp_path):
    pytest.importorskip("accelerate")  # transformers' Trainer needs it
    model = _model()
    ids, labels = _batch(B=4, T=6)

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"input_ids": ids[i], "labels": labels[i]}

    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_train_batch_size=2, max_steps=2,
        report_to=[], save_strategy="no", logging_strategy="no", use_cpu=True,
        gradient_accumulation_steps=1, disable_tqdm=True)
    calls = []

    def loss_func(outputs, labels, num_items_in_batch=None):
        calls.append(num_items_in_batch)
        return xt.causal_lm_loss(outputs, labels, num_items_in_batch=num_items_in_batch)

    trainer = transformers.Trainer(model=model, args=args, train_dataset=DS(),
                                   compute_loss_func=loss_func)
    result = trainer.train()
    assert len(calls) == 2
    assert torch.isfinite(torch.tensor(result.training_loss))


def test_linear_recipe_equals_model_forward_with_labels():
    """The docs/torch.md recipe: hidden states and lm_head.weight, no [B, T, V] logits."""
    model = _model()
    ids, labels = _batch()
    ref, gref = _loss_and_grads(model, ids, labels)
    model.zero_grad()
    hidden = model.model(input_ids=ids).last_hidden_state          # [B, T, D]
    shift = F.pad(labels, (0, 1), value=-100)[..., 1:]             # [B, T]
    loss = xent.linear_cross_entropy(hidden, model.lm_head.weight, shift, ignore_index=-100)
    loss.backward()
    torch.testing.assert_close(loss.detach(), ref, rtol=1e-5, atol=1e-6)
    for p, g in zip(model.parameters(), gref):
        torch.testing.assert_close(p.grad, g, rtol=1e-4, atol=1e-6)
