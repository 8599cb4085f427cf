"""Write a random-weight Stable Video Diffusion pipeline in diffusers' folder layout.

``--size tiny``: a small spatio-temporal UNet, temporal VAE and CLIP image encoder in SVD's real
architectures, for tests on the CPU (frames of 64x32). ``--size full``: SVD-XT's configuration
(25 frames, 1024x576), for GPU benchmarks, where speed and memory do not depend on the values.

    python scripts/make_svd.py --size tiny --out weights/svd-tiny
"""

from __future__ import annotations

import argparse
from pathlib import Path


def build(size: str, device: str = "cpu") -> object:
    import torch
    from diffusers import (
        AutoencoderKLTemporalDecoder,
        EulerDiscreteScheduler,
        StableVideoDiffusionPipeline,
        UNetSpatioTemporalConditionModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    with torch.device(device):
        if size == "tiny":
            unet = UNetSpatioTemporalConditionModel(
                sample_size=24, in_channels=8, out_channels=4, num_frames=14,
                down_block_types=("CrossAttnDownBlockSpatioTemporal", "DownBlockSpatioTemporal"),
                up_block_types=("UpBlockSpatioTemporal", "CrossAttnUpBlockSpatioTemporal"),
                block_out_channels=(32, 64), addition_time_embed_dim=8, projection_class_embeddings_input_dim=24,
                layers_per_block=1, cross_attention_dim=32, transformer_layers_per_block=1, num_attention_heads=(2, 4))
            vae = AutoencoderKLTemporalDecoder(down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                                               block_out_channels=(32, 64), layers_per_block=1, latent_channels=4)
            encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
                hidden_size=32, projection_dim=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                image_size=224, patch_size=32))  # the pipeline always resizes to 224 for its image encoder
        else:
            unet = UNetSpatioTemporalConditionModel(num_frames=25)  # diffusers' defaults are SVD's
            vae = AutoencoderKLTemporalDecoder()
            encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
                hidden_size=1280, projection_dim=1024, num_hidden_layers=32, num_attention_heads=16,
                intermediate_size=5120, image_size=224, patch_size=14))
        with torch.no_grad():  # keep random activations finite in fp16
            for module in (unet, vae):
                for parameter in module.parameters():
                    parameter.mul_(0.5)
    scheduler = EulerDiscreteScheduler(prediction_type="v_prediction", use_karras_sigmas=True, sigma_min=0.002,
                                       sigma_max=700.0, timestep_type="continuous", interpolation_type="linear")
    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    return StableVideoDiffusionPipeline(vae=vae, image_encoder=encoder, unet=unet, scheduler=scheduler,
                                        feature_extractor=processor)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--device", default="cpu", help="draw the random values here (cuda is much faster for full)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    pipe = build(args.size, args.device)
    if args.size == "full":
        pipe = pipe.to(dtype=__import__("torch").float16)
    pipe.save_pretrained(args.out)
    print(f"wrote a {args.size} random-weight SVD pipeline to {args.out}")


if __name__ == "__main__":
    main()
