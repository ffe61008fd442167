"""Graph breaks of MoRA under torch.compile (``torch._dynamo.explain``), per type: on one ``MoraLinear`` and on a tiny
transformers Llama with MoRA on every attention and MLP projection (compared with the same Llama without an adapter,
so the breaks the model has on its own are not charged to MoRA). Optionally also compiles each layer forward and
backward and reports the largest difference from eager.

    python scripts/compile_report.py                 # every type, layer and Llama
    python scripts/compile_report.py --types rope --check
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import moRA  # noqa: E402
from moRA.types import MORA_TYPES  # noqa: E402

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def mora_linear(mora_type: str, d: int = 24, k: int = 20, r: int = 2, device: str = "cpu") -> moRA.MoraLinear:
    """A small MoRA layer with a non-zero M (so the branch contributes), on ``device``."""
    torch.manual_seed(0)
    return moRA.MoraLinear(torch.nn.Linear(k, d), "default", r=r, mora_type=mora_type, init_weights=False).to(device)


def layer_breaks(layer: torch.nn.Module, x: torch.Tensor) -> tuple[int, int]:
    """(graphs, graph breaks) of one forward call of ``layer`` under Dynamo."""
    torch._dynamo.reset()
    explained = torch._dynamo.explain(layer)(x)
    return explained.graph_count, explained.graph_break_count


def compiled_difference(layer: torch.nn.Module, x: torch.Tensor) -> float:
    """Largest absolute difference between eager and ``torch.compile`` in the output and the gradients of x and M."""
    torch._dynamo.reset()
    results = []
    for fn in (layer, torch.compile(layer)):
        xi = x.detach().clone().requires_grad_(True)
        layer.zero_grad(set_to_none=True)
        out = fn(xi)
        out.square().sum().backward()
        results.append([out.detach(), xi.grad, layer.mora_M["default"].grad])
    return max(float((a - b).abs().max()) for a, b in zip(*results))


def tiny_llama(mora_type: str | None, device: str = "cpu"):
    """A 2-layer transformers Llama (random weights), with MoRA on every projection unless ``mora_type`` is None."""
    import peft
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32)
    model = LlamaForCausalLM(config).to(device)
    if mora_type is None:
        return model
    adapter = moRA.MoraConfig(r=2, mora_type=mora_type, target_modules=PROJECTIONS, init_weights=False)
    return peft.get_peft_model(model, adapter)


def model_breaks(model, ids: torch.Tensor) -> int:
    torch._dynamo.reset()
    return torch._dynamo.explain(lambda t: model(input_ids=t).logits)(ids).graph_break_count


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", nargs="+", default=list(MORA_TYPES), help="MoRA types (default: all)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-llama", action="store_true", help="only the single layers")
    parser.add_argument("--check", action="store_true", help="also compile fwd+bwd and compare with eager (slow)")
    args = parser.parse_args(argv)
    x = torch.randn(3, 5, 20, device=args.device)
    ids = torch.randint(0, 64, (2, 8), device=args.device)
    base = None if args.no_llama else model_breaks(tiny_llama(None, args.device), ids)
    if base is not None:
        print(f"tiny Llama without an adapter: {base} graph breaks")
    print("| type | MoraLinear graphs | MoraLinear breaks | Llama breaks (14 MoRA layers) | breaks per MoRA layer |"
          + (" max |compiled − eager| |" if args.check else ""))
    print("|---|---|---|---|---|" + ("---|" if args.check else ""))
    for mora_type in args.types:
        layer = mora_linear(mora_type, device=args.device)
        graphs, breaks = layer_breaks(layer, x)
        row = f"| {mora_type} | {graphs} | {breaks} |"
        if base is None:
            row += " – | – |"
        else:
            total = model_breaks(tiny_llama(mora_type, args.device), ids)
            row += f" {total} | {(total - base) / (2 * len(PROJECTIONS)):.2f} |"
        if args.check:
            row += f" {compiled_difference(layer, x):.2e} |"
        print(row, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
