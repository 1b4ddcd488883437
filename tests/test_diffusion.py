"""diffusion.py against diffusers' CogVideoX schedulers and pipeline (oracles) and hand-computed loss cases."""
import contextlib
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXPipeline  # noqa: E402

from diffusion import Schedule, cfg_scale, identity_loss, latent_mask, plain_loss  # noqa: E402
from figures import parity, rel_err  # noqa: E402  (tests/figures.py: the parity table of docs/results.md)


def ref_scheduler(cls=CogVideoXDDIMScheduler, snr_shift_scale=1.0):
    # the CogVideoX-5B(-I2V) scheduler config
    return cls(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
               prediction_type="v_prediction", rescale_betas_zero_snr=True, set_alpha_to_one=True,
               clip_sample=False, steps_offset=0, timestep_spacing="trailing", snr_shift_scale=snr_shift_scale)


def fake_v(x, t, i):
    """A deterministic stand-in for the DiT: some fixed nonlinear function of x and t."""
    tt = t.double().div(1000).reshape(-1, 1, 1, 1, 1).to(x.dtype)
    return torch.tanh(x) * (0.5 + tt) - 0.3 * torch.sin(2 * x) * (1 - tt) + 0.1


# ---- schedule ------------------------------------------------------------------------------------
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_alphas_cumprod_match_diffusers(shift):
    ours = Schedule(snr_shift_scale=shift).alphas_cumprod
    ref = ref_scheduler(snr_shift_scale=shift).alphas_cumprod
    assert ours.dtype == ref.dtype == torch.float64
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-14)
    assert ours[-1].item() == 0.0


@pytest.mark.parametrize("shift", [0.5, 3.0])
def test_scheduler_config_round_trip_through_diffusers(tmp_path, shift):
    """Our save() is a config diffusers loads to the same schedule; diffusers' own config loads to it in ours."""
    Schedule(snr_shift_scale=shift).save(tmp_path / "ours" / "scheduler")
    ref = CogVideoXDDIMScheduler.from_pretrained(tmp_path / "ours", subfolder="scheduler")
    torch.testing.assert_close(ref.alphas_cumprod, Schedule(snr_shift_scale=shift).alphas_cumprod, rtol=1e-12, atol=0)
    ref_scheduler(snr_shift_scale=shift).save_pretrained(tmp_path / "theirs" / "scheduler")
    back = Schedule.from_pretrained(tmp_path / "theirs")                 # the pipeline folder: reads its scheduler/
    assert back.config["snr_shift_scale"] == shift
    torch.testing.assert_close(back.alphas_cumprod, ref.alphas_cumprod, rtol=1e-12, atol=0)


def test_scheduler_config_refuses_what_it_does_not_implement(tmp_path):
    ref_scheduler().save_pretrained(tmp_path)
    cfg = tmp_path / "scheduler_config.json"
    cfg.write_text(cfg.read_text().replace('"v_prediction"', '"epsilon"'))
    with pytest.raises(ValueError, match="prediction_type"):
        Schedule.from_pretrained(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no scheduler_config.json"):
        Schedule.from_pretrained(tmp_path / "empty")


def test_alphas_cumprod_spot_values():
    a = Schedule().alphas_cumprod
    assert abs(a[0].item() - 0.99915) < 1e-6
    assert abs(a[500].item() - 0.2410) < 1e-4
    assert a[999].item() == 0.0
    assert abs(Schedule(snr_shift_scale=3.0).alphas_cumprod[500].item() - 0.0953) < 1e-4
    w = Schedule().loss_weight(torch.tensor([0, 500, 999]))
    torch.testing.assert_close(w, torch.tensor([1176.47, 1.3176, 1.0]), rtol=1e-4, atol=0)


def test_noise_velocity_x0_eps_match_diffusers():
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(3, 4, 2, 4, 6, generator=g), torch.randn(3, 4, 2, 4, 6, generator=g)
    t = torch.tensor([0, 517, 999])
    s, ref = Schedule(), ref_scheduler()
    xt = s.add_noise(x0, noise, t)
    torch.testing.assert_close(xt, ref.add_noise(x0, noise, t), rtol=1e-6, atol=1e-6)
    v = s.v_target(x0, noise, t)
    torch.testing.assert_close(v, ref.get_velocity(x0, noise, t), rtol=1e-6, atol=1e-6)
    # trainers get x0_hat from v with get_velocity's arguments swapped
    v_hat = v + 0.1 * torch.randn(v.shape, generator=g)
    torch.testing.assert_close(s.x0_from_v(xt, v_hat, t), ref.get_velocity(v_hat, xt, t), rtol=1e-6, atol=1e-6)
    # round trips: the exact v recovers x0 and the noise
    torch.testing.assert_close(s.x0_from_v(xt, v, t), x0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.eps_from_v(xt, v, t), noise, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("t", [0, 517, 979])
def test_scale_eps_moves_along_k_times_the_noise_estimate(t):
    g = torch.Generator().manual_seed(0)
    x, v = torch.randn(2, 4, 2, 4, 6, generator=g), torch.randn(2, 4, 2, 4, 6, generator=g)
    s, tt = Schedule(), torch.full((2,), t)
    v2 = s.scale_eps(v, x, t, 1.14)
    torch.testing.assert_close(s.eps_from_v(x, v2, tt), 1.14 * s.eps_from_v(x, v, tt), rtol=1e-5, atol=1e-5)
    a = s.alphas_cumprod[t].float()                # and its x0 estimate is the one that goes with it on the same x_t
    torch.testing.assert_close(a.sqrt() * s.x0_from_v(x, v2, tt) + (1 - a).sqrt() * s.eps_from_v(x, v2, tt), x,
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(s.scale_eps(v, x, t, 1.0), v) and torch.equal(s.scale_eps(v, x, 999, 1.14), v)  # off; a = 0


@pytest.mark.parametrize("below", [None, 500])
def test_sampler_with_eps_scale_is_ddim_on_the_scaled_noise_estimate(below):
    """Schedule.sample(eps_scale=k) is, step by step, DDIM written on eps: x_prev = sqrt(a_prev) (x - sqrt(1 - a)
    k eps_hat) / sqrt(a) + sqrt(1 - a_prev) k eps_hat (the first step, at a = 0, and with eps_below the steps at
    t >= eps_below, as plain DDIM); k = 1 is plain."""
    s, k, steps = Schedule(), 1.2, 6
    x_T = torch.randn(1, 4, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    x = x_T.clone()
    for i, t in enumerate(s.timesteps(steps).tolist()):
        tt = torch.full((1,), t)
        v = fake_v(x, tt, i)
        a, ap = s.alphas_cumprod[t], s._a_prev(t, steps)
        if a == 0 or (below is not None and t >= below):
            x = s.ddim_step(v, t, x, steps)[0].float()
            continue
        eps = k * s.eps_from_v(x, v, tt)
        x = (ap.sqrt() * (x - (1 - a).sqrt() * eps) / a.sqrt() + (1 - ap).sqrt() * eps).float()
    out = s.sample(fake_v, x_T, steps=steps, sampler="ddim", progress=False, eps_scale=k, eps_below=below)
    torch.testing.assert_close(out, x, rtol=1e-5, atol=1e-5)
    plain = s.sample(fake_v, x_T, steps=steps, sampler="ddim", progress=False)
    assert torch.equal(s.sample(fake_v, x_T, steps=steps, sampler="ddim", progress=False, eps_scale=1.0), plain)
    assert (out - plain).abs().max() > 1e-2


def test_sample_t_uniform_range_and_seeded():
    s = Schedule()
    t = s.sample_t(10000, torch.Generator().manual_seed(1))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() <= 999 and t.unique().numel() > 990
    assert torch.equal(s.sample_t(8, torch.Generator().manual_seed(3)), s.sample_t(8, torch.Generator().manual_seed(3)))


# ---- samplers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [1, 4, 7, 10, 30, 50, 64, 250, 1000])
def test_timesteps_match_diffusers(n):
    ref = ref_scheduler()
    ref.set_timesteps(n)
    assert torch.equal(Schedule().timesteps(n), ref.timesteps)
    ref = CogVideoXDDIMScheduler(**{**ref.config, "timestep_spacing": "linspace"})
    ref.set_timesteps(n)
    assert torch.equal(Schedule().timesteps(n, spacing="linspace"), ref.timesteps)


def run_reference(sampler, steps, x_T, seed, shift=1.0):
    # (as the pipeline: model output cast to fp32, latents cast back to x_T's dtype each step)
    """The loop of diffusers' CogVideoX pipelines, with fake_v as the model; latents at every step."""
    cls = CogVideoXDDIMScheduler if sampler == "ddim" else CogVideoXDPMScheduler
    sched = ref_scheduler(cls, shift)
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    latents, old, seen = x_T.clone(), None, []
    for i, t in enumerate(sched.timesteps):
        seen.append(latents)
        v = fake_v(latents, t.expand(latents.shape[0]), i).float()
        if sampler == "ddim":
            latents, old = sched.step(v, t, latents, eta=0.0, generator=g, return_dict=False)
        else:
            prev = sched.timesteps[i - 1] if i > 0 else None
            latents, old = sched.step(v, old, t, prev, latents, eta=0.0, generator=g, return_dict=False)
        latents = latents.to(x_T.dtype)
    return seen, latents, old


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
@pytest.mark.parametrize("steps,shift", [(50, 1.0), (30, 1.0), (7, 3.0), (1, 1.0)])
def test_sampler_matches_diffusers_step_for_step(sampler, steps, shift):
    x_T = torch.randn(2, 4, 3, 6, 8, generator=torch.Generator().manual_seed(0))
    ref_seen, ref_out, ref_last_x0 = run_reference(sampler, steps, x_T, seed=42, shift=shift)

    seen = []

    def v_fn(x, t, i):
        assert t.shape == (x.shape[0],) and t.dtype == torch.long
        seen.append(x)
        return fake_v(x, t, i)

    out = Schedule(snr_shift_scale=shift).sample(v_fn, x_T.clone(), steps=steps, sampler=sampler,
                                                 generator=torch.Generator().manual_seed(42), progress=False)
    assert len(seen) == len(ref_seen) == steps
    parity("samplers", max(rel_err(a, b) for a, b in zip(seen + [out], ref_seen + [ref_out])))
    for ours, ref in zip(seen + [out], ref_seen + [ref_out]):
        scale = ref.abs().max().item()
        torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5 * scale)
    # the pipeline's final latents are the last step's x0 estimate when that step's "previous"
    # index t - 1000//N is < 0 (a_prev = 1); when round(1000/N) > 1000//N (e.g. N=7) it is t=0 instead
    last_t = Schedule().timesteps(steps)[-1].item()
    if last_t - 1000 // steps < 0:
        torch.testing.assert_close(ref_out, ref_last_x0, rtol=1e-6, atol=1e-6)
    else:
        assert steps == 7 and last_t == 142


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_sampler_bf16_matches_pipeline_casting(sampler):
    x_T = torch.randn(2, 4, 3, 6, 8, generator=torch.Generator().manual_seed(0)).bfloat16()
    _, ref_out, _ = run_reference(sampler, 50, x_T, seed=7)
    out = Schedule().sample(fake_v, x_T, steps=50, sampler=sampler, generator=torch.Generator().manual_seed(7),
                            progress=False)
    assert out.dtype == torch.bfloat16
    parity("samplers-bf16", rel_err(out, ref_out))
    torch.testing.assert_close(out, ref_out, rtol=1e-2, atol=1e-2)


def test_dpm_is_stochastic_and_seeded():
    s, x_T = Schedule(), torch.randn(1, 4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    run = lambda seed: s.sample(fake_v, x_T, steps=5, sampler="dpm",  # noqa: E731
                                generator=torch.Generator().manual_seed(seed), progress=False)
    assert torch.equal(run(1), run(1)) and not torch.equal(run(1), run(2))


V_U, V_C = 0.5, 2.5   # what the stub transformer returns for the negative prompt / the prompt


class StubTransformer(torch.nn.Module):
    """Stands in for the DiT inside diffusers' CogVideoXPipeline: v = V_U for the negative prompt's embedding
    (zeros), V_C for the prompt's (ones), so the guided v the pipeline hands its scheduler reveals the scale it
    used at that step: (v - V_U) / (V_C - V_U). Only the attributes the pipeline reads are provided."""
    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))   # the pipeline finds its device through parameters
        self.config = type("Config", (), dict(patch_size=2, patch_size_t=None, sample_height=4, sample_width=4,
                                              sample_frames=5, in_channels=4,
                                              use_rotary_positional_embeddings=False))()

    def cache_context(self, name):
        return contextlib.nullcontext()

    def forward(self, hidden_states, encoder_hidden_states, timestep, **kw):
        is_prompt = encoder_hidden_states[:, :1, :1, None, None]            # (2B, 1, 1, 1, 1): 0 or 1
        return (torch.full_like(hidden_states, V_U) + (V_C - V_U) * is_prompt,)


def pipeline_scales(guidance, steps, dynamic):
    """[(t, the scale diffusers' CogVideoXPipeline applied at that step)] with the stub transformer."""
    seen = []

    class Recorder(CogVideoXDDIMScheduler):
        def step(self, model_output, timestep, *args, **kw):
            s = (model_output.double() - V_U) / (V_C - V_U)
            assert (s - s.flatten()[0]).abs().max() < 1e-6                   # one scale for every element
            seen.append((int(timestep), s.flatten()[0].item()))
            return super().step(model_output, timestep, *args, **kw)

    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=StubTransformer(),
                             scheduler=Recorder(**ref_scheduler().config))
    pipe.set_progress_bar_config(disable=True)
    pipe(prompt_embeds=torch.ones(1, 3, 4), negative_prompt_embeds=torch.zeros(1, 3, 4), height=16, width=16,
         num_frames=5, num_inference_steps=steps, guidance_scale=guidance, use_dynamic_cfg=dynamic,
         output_type="latent", generator=torch.Generator().manual_seed(0))
    return seen


@pytest.mark.parametrize("guidance,steps,dynamic", [(6.0, 50, False), (6.0, 50, True), (3.5, 10, True),
                                                    (2.0, 7, True)])
def test_cfg_scale_matches_the_pipeline(guidance, steps, dynamic):
    """Every step's scale equals the one diffusers' CogVideoX pipeline applies (recovered from its guided v)."""
    seen = pipeline_scales(guidance, steps, dynamic)
    assert [t for t, _ in seen] == Schedule().timesteps(steps).tolist()
    ours = torch.tensor([cfg_scale(guidance, i, t, steps, dynamic) for i, (t, _) in enumerate(seen)])
    want = torch.tensor([s for _, s in seen])
    parity("cfg-scale", rel_err(ours, want))
    assert rel_err(ours, want) < 1e-6
    if dynamic:                                        # not constant: the test would see a wrong formula
        assert want.max() - want.min() > 1.0


def test_cfg_scale_hand_values():
    assert cfg_scale(6.0, 3, 900, 50, dynamic=False) == 6.0
    # dynamic: 1 + g (1 - cos(pi ((N - t) / N)^5)) / 2 with the DDPM timestep t (the pipeline's choice):
    # t == N gives cos(0) = 1 -> 1; t = N - N * 1 (t = 0) gives cos(pi) = -1 -> 1 + g
    assert cfg_scale(6.0, 0, 50, 50, dynamic=True) == 1.0
    assert cfg_scale(6.0, 49, 0, 50, dynamic=True) == 7.0


# ---- latent mask ---------------------------------------------------------------------------------
def latent_of_single_pixel(frame, h, w, T=9, H=16, W=24):
    m = torch.zeros(1, 1, T, H, W)
    m[0, 0, frame, h, w] = 1
    lat = latent_mask(m)
    assert lat.shape == (1, 1, (T - 1) // 4 + 1, H // 8, W // 8)
    return [tuple(i) for i in lat[0, 0].nonzero().tolist()]


def test_latent_mask_hand_cases():
    assert latent_of_single_pixel(0, 0, 0) == [(0, 0, 0)]        # frame 0 stands alone
    assert latent_of_single_pixel(1, 3, 9) == [(1, 0, 1)]        # frames 1..4 -> latent frame 1
    assert latent_of_single_pixel(3, 10, 17) == [(1, 1, 2)]
    assert latent_of_single_pixel(4, 15, 23) == [(1, 1, 2)]
    assert latent_of_single_pixel(5, 8, 8) == [(2, 1, 1)]        # frames 5..8 -> latent frame 2
    assert latent_of_single_pixel(8, 7, 7) == [(2, 0, 0)]
    # uint8 / bool input, an all-ones and an all-zeros mask
    m = torch.ones(2, 1, 5, 8, 8, dtype=torch.uint8)
    m[1] = 0
    lat = latent_mask(m)
    assert lat.dtype == torch.float32 and lat.shape == (2, 1, 2, 1, 1)
    assert lat[0].eq(1).all() and lat[1].eq(0).all()
    with pytest.raises(AssertionError):
        latent_mask(torch.zeros(1, 1, 8, 16, 16))  # T must be 4k+1


# ---- identity loss -------------------------------------------------------------------------------
def one_sample():
    """C=2, T=1, H=1, W=2; squared errors [[1, 4], [9, 0]] (channel x cell)."""
    x0 = torch.zeros(1, 2, 1, 1, 2)
    pred = torch.tensor([[1.0, 2.0], [3.0, 0.0]]).reshape(1, 2, 1, 1, 2)
    return pred, x0


def test_identity_loss_hand_computed():
    pred, x0 = one_sample()
    mask = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 1, 2)
    w = torch.tensor([1.0])
    loss, fg, bg = identity_loss(pred, x0, mask, w)
    assert fg.item() == 5.0 and bg.item() == 2.0 and loss.item() == 3.5  # (1+9)/2, (4+0)/2
    assert identity_loss(pred, x0, mask, w, alpha=1.0)[0].item() == 5.0
    assert identity_loss(pred, x0, mask, w, alpha=0.0)[0].item() == 2.0
    assert identity_loss(pred, x0, mask, w, alpha=0.8)[0].item() == pytest.approx(0.8 * 5 + 0.2 * 2)
    assert identity_loss(pred, x0, mask, torch.tensor([2.0]))[0].item() == 7.0  # w(t) scales se


def test_identity_loss_empty_and_full_mask_equal_plain_loss():
    pred, x0 = one_sample()
    w = torch.tensor([1.0])
    for m in (0.0, 1.0):
        mask = torch.full((1, 1, 1, 1, 2), m)
        loss, fg, bg = identity_loss(pred, x0, mask, w)
        assert loss.item() == fg.item() == bg.item() == 3.5 == plain_loss(pred, x0, w).item()
    # random tensors, any alpha, gradients finite
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(3, 4, 2, 3, 5, generator=g, requires_grad=True)
    x0, w = torch.randn(3, 4, 2, 3, 5, generator=g), torch.tensor([1.0, 2.5, 7.0])
    for m in (0.0, 1.0):
        for alpha in (0.0, 0.3, 1.0):
            loss = identity_loss(pred, x0, torch.full((3, 1, 2, 3, 5), m), w, alpha)[0]
            torch.testing.assert_close(loss, plain_loss(pred, x0, w))
            (grad,) = torch.autograd.grad(loss, pred)
            assert torch.isfinite(grad).all()


def test_identity_loss_mixed_batch():
    p0, x0 = one_sample()
    p1 = torch.tensor([[2.0, 0.0], [0.0, 0.0]]).reshape(1, 2, 1, 1, 2)  # se [[4, 0], [0, 0]]
    p2 = torch.tensor([[0.0, 1.0], [0.0, 1.0]]).reshape(1, 2, 1, 1, 2)  # se [[0, 1], [0, 1]]
    pred, x0 = torch.cat([p0, p1, p2]).requires_grad_(), x0.expand(3, -1, -1, -1, -1)
    mask = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0]]).reshape(3, 1, 1, 1, 2)
    w = torch.tensor([1.0, 3.0, 2.0])
    loss, fg, bg = identity_loss(pred, x0, mask, w)
    # sample 0: fg 5, bg 2.  sample 1 (empty, w=3): whole mean 3*4/4 = 3 for both.
    # sample 2 (full, w=2): fg = 2*2/4 = 1, bg (empty) = whole mean = 1.
    assert fg.item() == pytest.approx((5 + 3 + 1) / 3) and bg.item() == pytest.approx((2 + 3 + 1) / 3)
    assert loss.item() == pytest.approx((3.5 + 3 + 1) / 3)
    assert loss.requires_grad and not fg.requires_grad and not bg.requires_grad
    loss.backward()
    assert torch.isfinite(pred.grad).all()
