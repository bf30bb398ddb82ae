"""LTX-Video as the reconstruction decoder: diffusers' LTXPipeline without its text encoder, conditioned on the
[B, 64, 4096] encoder output passed as prompt_embeds (with an all-ones mask)."""

from __future__ import annotations

import numpy as np
import torch

from hybrid.contracts import valid_frame_count
from hybrid.profiles import Profile


class VideoDecoder:
    """Generates frames from conditioning; deterministic for a given seed.

    With `hybrid.acceleration.accelerate_decoder` applied, the transformer and the VAE decode replay graphs for the
    (batch, frames) shapes prepared at load: a batch of a prepared frame count runs in prepared chunks (padded up,
    or split), anything else runs without graphs.
    """

    def __init__(self, pipeline, height: int, width: int) -> None:
        self.pipeline = pipeline
        self.height = height
        self.width = width
        self.prepared: dict[int, tuple[int, ...]] = {}  # frames → batch sizes with graphs
        pipeline.set_progress_bar_config(disable=True)

    @property
    def device(self) -> torch.device:
        return self.pipeline.transformer.device

    def __call__(self, conditioning: torch.Tensor, num_frames: int, steps: int, seeds: list[int]) -> np.ndarray:
        """conditioning [B, 64, 4096] → frames [B, F, H, W, 3] uint8; one seed per batch item."""
        from hybrid.acceleration import pad_batch, plan_chunks

        chunks = []
        for start, stop, size in plan_chunks(conditioning.shape[0], self.prepared.get(num_frames, ())):
            padded = pad_batch(conditioning[start:stop], size)
            chunk_seeds = seeds[start:stop] + [0] * (size - (stop - start))
            chunks.append(self.run(padded, num_frames, steps, chunk_seeds)[: stop - start])
        return chunks[0] if len(chunks) == 1 else np.concatenate(chunks)

    @torch.inference_mode()
    def run(self, conditioning: torch.Tensor, num_frames: int, steps: int, seeds: list[int]) -> np.ndarray:
        """One pipeline call over the whole batch."""
        if not valid_frame_count(num_frames):
            raise ValueError(f"LTX-Video decodes 8k+1 frames (1, 9, 17, …), not {num_frames}")
        if steps < 1:
            raise ValueError(f"steps must be at least 1, got {steps}")
        batch = conditioning.shape[0]
        dtype = self.pipeline.transformer.dtype
        generators = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        out = self.pipeline(
            prompt_embeds=conditioning.to(self.device, dtype),
            prompt_attention_mask=torch.ones(batch, conditioning.shape[1], dtype=torch.long, device=self.device),
            guidance_scale=1.0,  # no negative embeddings without a text encoder
            num_frames=num_frames,
            height=self.height,
            width=self.width,
            num_inference_steps=steps,
            generator=generators,
            output_type="pt",
        )
        frames = out.frames  # [B, F, C, H, W] in [0, 1]
        return (frames.permute(0, 1, 3, 4, 2).float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def build_decoder(profile: Profile, device: str | torch.device = "cpu") -> VideoDecoder:
    """LTX-Video for `profile`: seeded random transformer and VAE, or a local diffusers directory."""
    # From their modules: diffusers' lazy top-level names resolve to its dummy classes for a type checker.
    from diffusers.models.autoencoders.autoencoder_kl_ltx import AutoencoderKLLTXVideo
    from diffusers.models.transformers.transformer_ltx import LTXVideoTransformer3DModel
    from diffusers.pipelines.ltx.pipeline_ltx import LTXPipeline
    from diffusers.schedulers.scheduling_flow_match_euler_discrete import FlowMatchEulerDiscreteScheduler

    cfg = profile.decoder
    dtype = getattr(torch, profile.dtype)
    if profile.random_weights or cfg.checkpoint is None:
        torch.manual_seed(profile.seed)
        with torch.device(device):  # initialize on the target device: seconds for 2B parameters on a GPU
            transformer = LTXVideoTransformer3DModel(**cfg.transformer)
            vae = AutoencoderKLLTXVideo(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.vae.items()})
        # Small latents: whole-clip decoding (LTX's defaults split frames only for memory on long clips).
        vae.use_framewise_encoding = vae.use_framewise_decoding = False
        pipeline = LTXPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=vae,
            # No T5: the fusion output is the prompt embedding (diffusers annotates the encoder as required).
            text_encoder=None,  # type: ignore[arg-type]
            tokenizer=None,
            transformer=transformer,
        )
    else:
        pipeline = LTXPipeline.from_pretrained(
            cfg.checkpoint, text_encoder=None, tokenizer=None, torch_dtype=dtype, local_files_only=True
        )
    pipeline = pipeline.to(device=device) if dtype == torch.float32 else pipeline.to(device=device, dtype=dtype)
    return VideoDecoder(pipeline, cfg.height, cfg.width)
