"""Write tiny random-weight safety checkers in the real architectures and folder layouts.

- ``--kind compvis``: diffusers' ``StableDiffusionSafetyChecker`` (a CLIP vision tower, a projection,
  17 concept and 3 special-care embeddings with their thresholds) with its ``CLIPImageProcessor``,
  in the layout of CompVis/stable-diffusion-safety-checker (``config.json``, ``model.safetensors``,
  ``preprocessor_config.json``).
- ``--kind falconsai``: a transformers ``ViTForImageClassification`` with labels ``normal`` and
  ``nsfw`` and its ``ViTImageProcessor``, in the layout of Falconsai/nsfw_image_detection.

Random weights give arbitrary verdicts, so the verdict is set through the model's own parameters:
``--flag all`` or ``none`` set every concept threshold (or the classifier's bias) so that every image,
or none, is flagged; ``--flag images --flagged A.png --others B.png,C.png`` sets the concept embeddings
(or the classifier's nsfw direction) from those pictures so that A is flagged and B and C are not.

    python scripts/make_safety_checker.py --kind compvis --flag none --out weights/safety-checker
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

SIZE = 32  # the processors' input side: tiny, as the models are


def compvis(flag: str, flagged: Sequence[Any] = (), others: Sequence[Any] = (), seed: int = 0) -> tuple[Any, Any]:
    """The checker; with ``flag="images"``, ``flagged`` are flagged and ``others`` (the rest the tests show it) not."""
    import torch
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 2, "num_hidden_layers": 1,
                     "vocab_size": 99, "projection_dim": 16, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1},
        vision_config={"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 2, "num_hidden_layers": 2,
                       "image_size": SIZE, "patch_size": 8, "projection_dim": 16},
        projection_dim=16,
    )
    checker = StableDiffusionSafetyChecker(config).eval()
    processor = CLIPImageProcessor(size={"shortest_edge": SIZE}, crop_size={"height": SIZE, "width": SIZE})
    with torch.no_grad():
        checker.special_care_embeds_weights.fill_(10.0)  # special care: never (cosine similarity is at most 1)
        checker.concept_embeds_weights.fill_({"all": -10.0, "none": 10.0, "images": 10.0}[flag])
        if flag == "images":
            # A random tower maps every picture to nearly the same embedding (cosines of 0.999, and the
            # checker rounds scores to 3 decimals): the projection drops the shared part, so that what
            # differs between pictures decides.
            pooled = checker.vision_model(processor([*flagged, *others], return_tensors="pt").pixel_values)[1]
            shared = pooled.mean(0)
            weight = checker.visual_projection.weight
            weight -= torch.outer(weight @ shared, shared) / (shared @ shared)
            embeds = torch.nn.functional.normalize(checker.visual_projection(pooled), dim=-1)
            for index in range(len(flagged)):
                nearest = max(float(embeds[index] @ other) for other in embeds[len(flagged):]) if others else 0.0
                checker.concept_embeds[index] = embeds[index]
                checker.concept_embeds_weights[index] = (1.0 + nearest) / 2  # under itself, above the others
    return checker, processor


def embed(checker: Any, processor: Any, images: Sequence[Any]) -> Any:
    import torch

    with torch.no_grad():
        pixels = processor(list(images), return_tensors="pt").pixel_values
        return checker.visual_projection(checker.vision_model(pixels)[1])


def falconsai(flag: str, flagged: Sequence[Any] = (), others: Sequence[Any] = (), seed: int = 0) -> tuple[Any, Any]:
    """The classifier; with ``flag="images"``, ``nsfw`` for ``flagged`` and ``normal`` for ``others``."""
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    torch.manual_seed(seed)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37,
                       image_size=SIZE, patch_size=8, id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1})
    model = ViTForImageClassification(config).eval()
    processor = ViTImageProcessor(size={"height": SIZE, "width": SIZE})
    with torch.no_grad():
        model.classifier.weight.zero_()
        model.classifier.bias.copy_(torch.tensor({"all": [0.0, 10.0], "none": [10.0, 0.0], "images": [0.0, 0.0]}[flag]))
        if flag == "images":  # the nsfw logit: along the flagged pictures' difference from the others
            features = model.vit(processor([*flagged, *others], return_tensors="pt").pixel_values).last_hidden_state[:, 0]
            bad, good = features[: len(flagged)], features[len(flagged):]
            direction = torch.nn.functional.normalize(bad.mean(0) - good.mean(0), dim=0)
            cut = (float((bad @ direction).min()) + float((good @ direction).max())) / 2
            model.classifier.weight[1] = direction * 1000
            model.classifier.bias[1] = -1000 * cut
    return model, processor


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kind", choices=["compvis", "falconsai"], required=True)
    parser.add_argument("--flag", choices=["all", "none", "images"], default="none")
    parser.add_argument("--flagged", default="", help="comma-separated pictures to flag (with --flag images)")
    parser.add_argument("--others", default="", help="comma-separated pictures not to flag (with --flag images)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    from PIL import Image

    def read(paths: str) -> list:
        return [Image.open(path).convert("RGB") for path in paths.split(",") if path]

    model, processor = (compvis if args.kind == "compvis" else falconsai)(args.flag, read(args.flagged), read(args.others))
    model.save_pretrained(args.out)
    processor.save_pretrained(args.out)
    print(f"wrote a tiny {args.kind} checker (flag {args.flag}) to {args.out}")


if __name__ == "__main__":
    main()
