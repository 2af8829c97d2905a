"""Train a causal LM without ever holding its [B, T, V] logits.

A Hugging Face ``LlamaForCausalLM`` computes ``logits = lm_head(hidden)``
(``[B, T, V]``), upcasts them to float32 and takes the cross-entropy: at a
large vocabulary those logits, their float32 copy and their gradient are the
biggest tensors of the step. The recipe instead takes the decoder's hidden
states and ``lm_head.weight`` straight into ``xent.linear_cross_entropy``,
which walks the vocabulary in chunks; loss and gradients are the same::

    hidden = model.model(input_ids=ids, attention_mask=mask).last_hidden_state  # [B, T, D]
    shift = torch.nn.functional.pad(labels, (0, 1), value=-100)[..., 1:]         # [B, T]
    loss = xent.linear_cross_entropy(hidden, model.lm_head.weight, shift, ignore_index=-100)
    loss.backward()

(With gradient accumulation, pass ``reduction="sum"`` and divide by the count
of non-ignored tokens over all micro-batches.)

Peak memory of one training step is measured for both ways, each in a fresh
process: on CUDA with ``torch.cuda.max_memory_allocated``; on CPU as the growth
of the process's peak resident set (``resource.getrusage(RUSAGE_SELF).ru_maxrss``)
across the first step, after the model and batch are built. The CPU figure is
informal (it includes allocator caching), but the logits' share is plain.

    python examples/causal_lm_linear.py                # V=32000, B=4, T=256, tiny decoder
    python examples/causal_lm_linear.py --vocab 64000
    python examples/causal_lm_linear.py --quick        # seconds: V=1024, B=2, T=32
    XENT_EXAMPLE_QUICK=1 python examples/causal_lm_linear.py   # the same
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

import torch
import torch.nn.functional as F
import transformers

import xent


def build(args, device):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=args.vocab, hidden_size=args.dim,
                                   intermediate_size=2 * args.dim, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=4,
                                   max_position_embeddings=args.seq)
    model = transformers.LlamaForCausalLM(cfg).to(device)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, args.vocab, (args.batch, args.seq), generator=g).to(device)
    labels = ids.clone()
    labels[:, : args.seq // 8] = -100  # a prompt that is not trained on
    return model, ids, labels


def step(model, ids, labels, way: str) -> torch.Tensor:
    if way == "logits":  # the model's own forward with labels: [B, T, V] logits
        loss = model(input_ids=ids, labels=labels).loss
    else:  # the recipe
        hidden = model.model(input_ids=ids).last_hidden_state
        shift = F.pad(labels, (0, 1), value=-100)[..., 1:]
        loss = xent.linear_cross_entropy(hidden, model.lm_head.weight, shift, ignore_index=-100)
    loss.backward()
    return loss.detach()


def measure(args, way: str) -> dict:
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, ids, labels = build(args, device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss = step(model, ids, labels, way)
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        loss = step(model, ids, labels, way)
        peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
    return {"way": way, "device": device, "loss": float(loss), "peak_bytes": int(peak)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true",
                   default=os.environ.get("XENT_EXAMPLE_QUICK", "") not in ("", "0"),
                   help="small sizes (also XENT_EXAMPLE_QUICK=1): a run of seconds")
    p.add_argument("--vocab", type=int, default=None)
    p.add_argument("--dim", type=int, default=None)
    p.add_argument("--batch", type=int, default=None)
    p.add_argument("--seq", type=int, default=None)
    p.add_argument("--child", choices=["logits", "linear"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sizes = ({"vocab": 1024, "dim": 32, "batch": 2, "seq": 32} if args.quick else
             {"vocab": 32000, "dim": 64, "batch": 4, "seq": 256})
    for k, v in sizes.items():  # explicit options win over either set of defaults
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.child:
        print(json.dumps(measure(args, args.child)))
        return
    passthrough = [f"--vocab={args.vocab}", f"--dim={args.dim}", f"--batch={args.batch}",
                   f"--seq={args.seq}"]
    res = {}
    for way in ("logits", "linear"):  # a fresh process each, so the peaks don't mix
        out = subprocess.run([sys.executable, __file__, *passthrough, f"--child={way}"],
                             check=True, capture_output=True, text=True).stdout
        res[way] = json.loads(out.strip().splitlines()[-1])
    B, T, V = args.batch, args.seq, args.vocab
    mib = 2**20
    print(f"LlamaForCausalLM, vocabulary {V:,}, hidden {args.dim}, batch {B} x {T} tokens "
          f"on {res['logits']['device']}; one float32 [B, T, V] tensor is {B * T * V * 4 / mib:.0f} MiB")
    for way, name in (("logits", "model(..., labels=...)"), ("linear", "linear_cross_entropy recipe")):
        r = res[way]
        print(f"{name:>30}: loss {r['loss']:.6f}, step peak memory {r['peak_bytes'] / mib:8.0f} MiB")
    saved = res["logits"]["peak_bytes"] - res["linear"]["peak_bytes"]
    print(f"saved {saved / mib:.0f} MiB per step "
          f"({res['logits']['peak_bytes'] / max(res['linear']['peak_bytes'], 1):.1f}x less); "
          f"same loss to {abs(res['logits']['loss'] - res['linear']['loss']):.1e}")


if __name__ == "__main__":
    main()
