"""Every random draw of the training recipe, checked against the release's values on the path training takes.

Each draw is recovered from what was applied, not from the code that draws it: the pixels that reach the VAE
(a recording encoder on a real toy VAE: its sample_latent still draws the posterior), the latents that come out
of train.Conditioner, the affine windows the re-framing warps with, the jittered colours, the timesteps the DiT
receives. Release values (train.py's flag help, ../shared/reference/cogvideox.md §1: the StM release's
stm_main.conf and augmentation/paper.yaml): fg pixel noise sigma = exp(N(-1.0, 0.5)), bg exp(N(-3.0, 0.5)), one
sigma per call (shape (1,)), fg re-encoded from the augmented frames and masked with the augmented mask; flip
p 0.7; re-framing p 0.7, zoom [0.5, 2.0]; colour jitter p 0.2, brightness/contrast/saturation/hue 0.2; prompt
drop 0.0; t uniform on 0..999 (every CogVideoX trainer).

Tolerances: a frequency p over n trials gets 4 standard errors, 4 sqrt(p (1 - p) / n) (two-sided, ~6e-5); a
mean of n normals with spread s gets 4 s / sqrt(n); a sample std 4 s / sqrt(2 (n - 1)); a distribution gets the
Kolmogorov-Smirnov bound D < 1.95 / sqrt(n) (P ~ 0.001 under the right law). Every generator is seeded, so
each number is the same on every run: the bounds say how far a breakage must move a draw to be caught, not how
often a correct recipe fails. The cached paths and the training-loop run are marked slow; the uncached path and
the cheap tests run in the quick lane.
"""
import dataclasses
import inspect
import math

import pytest
import torch

from plumbing import weights
from plumbing.dataset import LayeredClips
import augment as A
import diffusion
import dit
import train
import vae as V
from augment import Augment
from conftest import single_thread
from plumbing.video import LUMA

one_thread = single_thread("module")

B, T, H, W = 4, 5, 32, 32            # toy VAE: x4 time, x4 space -> latent (16, 2, 8, 8)
N_CLIPS = 8
N_CALLS = 300                        # Conditioner calls per path: 300 sigma draws per layer, 1200 augmented fgs
POST_STD = 0.5                       # the recording encoder's posterior std (logvar = 2 ln 0.5)
POST_MEAN = 0.2
KS = 1.95                            # Kolmogorov-Smirnov: P(sqrt(n) D > 1.95) ~ 0.001
RELEASE = train.parser.parse_args(["--data", "unused"])      # the flags' defaults: the release's recipe


def four_se(p, n):
    return 4 * math.sqrt(p * (1 - p) / n)


def ks(samples, cdf):
    x = sorted(samples)
    n = len(x)
    return max(max((i + 1) / n - cdf(v), cdf(v) - i / n) for i, v in enumerate(x))


def normal_cdf(mu, s):
    return lambda v: 0.5 * (1 + math.erf((v - mu) / (s * math.sqrt(2))))


def uniform_cdf(lo, hi):
    return lambda v: min(1.0, max(0.0, (v - lo) / (hi - lo)))


def training_augment(a=RELEASE):
    """What train.main builds from the flags (test_training_loop_draws checks that it does)."""
    return Augment(flip_p=a.flip_p, crop_p=a.crop_p, crop_scale=tuple(a.crop_scale), crop_shift=a.crop_shift)


# ---------------------------------------------------------------------------------------------
# A batch whose layers can be told apart, and recorders around the real code


def sprite(i):
    """Clip i's fg layer: a grey rectangle (drifting right a pixel a frame) whose value ramps up from left to
    right, -1 outside; a flip reverses the ramp, a zoom or shift keeps its direction, jitter keeps the order of
    its greys. -> fg (3, T, H, W), mask (1, T, H, W)."""
    r0, c0, h, w = 6 + 2 * (i % 3), 4 + 2 * (i % 4), 12, 14
    x = torch.arange(W).float()
    fg, m = -torch.ones(3, T, H, W), torch.zeros(1, T, H, W)
    for t in range(T):
        c = c0 + t
        m[:, t, r0:r0 + h, c:c + w] = 1
        fg[:, t, r0:r0 + h, c:c + w] = (-0.6 + 1.2 * (x[c:c + w] - c) / (w - 1))
    return fg, m


PATTERN = 0.5 * torch.rand(3, T, H, W, generator=torch.Generator().manual_seed(1))


def clean(i):
    """Clip i's clean video (about +4) and bg (about -4): far apart from each other and from the fg's [-1, 1], so
    which layer reached the encoder can be read off its mean whatever the noise; textured, so a layer that was
    moved would not subtract to pure noise."""
    return 4 + PATTERN + 0.05 * i, -4 + PATTERN.flip(-1) - 0.05 * i


SPRITES = [sprite(i) for i in range(N_CLIPS)]
CLEAN = [clean(i) for i in range(N_CLIPS)]


def batch(idx, cached=False, bg_cached=False):
    fgs, ms = zip(*[SPRITES[i] for i in idx])
    b = {"fg": torch.stack(fgs), "mask": torch.stack(ms), "caption": [f"clip {i}" for i in idx]}
    if not cached:
        b["video"] = torch.stack([CLEAN[i][0] for i in idx])
    if not bg_cached:                                      # the dataset skips what the cache holds
        b["bg"] = torch.stack([CLEAN[i][1] for i in idx])
    return b


def latent_shape(x):
    return (x.shape[0], 16, (x.shape[2] - 1) // 4 + 1, x.shape[3] // 4, x.shape[4] // 4)


def probe_vae():
    """A real toy VAE (scaling 0.7, time x4, space x4) whose encoder records its input and answers a known
    posterior: mean 0.2, std 0.5; sample_latent, the draw training calls, is the VAE's own."""
    torch.manual_seed(0)
    vae = V.VAE(dataclasses.replace(V.PRESETS["toy"], scaling_factor=0.7)).eval()
    vae.seen = []

    def encode(x, **kw):
        vae.seen.append(x.detach().clone())
        shape = latent_shape(x)
        return torch.full(shape, POST_MEAN), torch.full(shape, 2 * math.log(POST_STD))
    vae.encode = encode
    return vae


class Texts:
    def __init__(self):
        self.calls = []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        return torch.zeros(len(prompts), 4, 8)


class RecordingAugment:
    """The training Augment, with its calls, crops, jitters and outputs recorded (crop and jitter are wrapped on
    the instance, so Augment.__call__'s own draws decide when they run)."""

    def __init__(self, aug):
        self.aug, self.outs, self.crops, self.jitters = aug, [], 0, 0
        crop, jitter = aug.crop, aug.jitter

        def counted_crop(*a, **k):
            self.crops += 1
            return crop(*a, **k)

        def counted_jitter(*a, **k):
            self.jitters += 1
            return jitter(*a, **k)
        aug.crop, aug.jitter = counted_crop, counted_jitter

    def __call__(self, fg, mask, g):
        out = self.aug(fg, mask, g)
        self.outs.append((out[0].clone(), out[1].clone()))
        return out


def flipped(fg, m):
    """Whether the ramp runs right-to-left: the sign of the correlation of grey level with x over the mask."""
    sel = m[0].bool()
    x = torch.arange(W).float().expand(m.shape[1:])[sel]
    v = fg[0][sel]
    return ((x - x.mean()) * (v - v.mean())).sum().item() < 0


def write_cache(folder):
    """A latent cache in train.cache_latents' layout: mean 0.2 + 0.01 i, std 0.5 for clip i's video and bg."""
    shape = (16, 2, H // 4, W // 4)
    for i in range(N_CLIPS):
        mean = torch.full(shape, POST_MEAN + 0.01 * i)
        logvar = torch.full(shape, 2 * math.log(POST_STD))
        sd = {"video_mean": mean, "video_logvar": logvar, "bg_mean": -mean, "bg_logvar": logvar.clone()}
        weights.save_state_dict(sd, folder, f"{i:07d}.safetensors")
    return folder


def log_std(x, dims):
    return x.std(dim=dims).log()


def moments(eps):
    """Mean and kurtosis of noise divided by its own std (0 and 3 for a normal draw)."""
    z = eps / eps.std()
    return z.mean().item(), (z ** 4).mean().item()


# ---------------------------------------------------------------------------------------------
# The Conditioner run: N_CALLS seeded batches through each of training's three paths, summarised per call

# the uncached path runs in the quick lane (~3 s with its 8 tests); the two cached ones are slow
PATHS = ["uncached", pytest.param("cached", marks=pytest.mark.slow),
         pytest.param("cached-bg-latent", marks=pytest.mark.slow)]


@pytest.fixture(scope="module", params=PATHS)
def run(request, tmp_path_factory):
    path = request.param
    cached, bg_latent = path != "uncached", path == "cached-bg-latent"
    cache = write_cache(tmp_path_factory.mktemp("latents")) if cached else None
    vae, texts = probe_vae(), Texts()
    aug = RecordingAugment(training_augment())
    scale = vae.config.scaling_factor
    cond = train.Conditioner(vae, texts, aug, fg_noise=RELEASE.fg_noise, bg_noise=RELEASE.bg_noise, text_drop=0.1,
                             cache=cache, bg_noise_latent=bg_latent)
    warps, rec = [], {k: [] for k in ("fg_ls", "bg_ls", "fg_ls_each", "bg_ls_each", "fg_mom", "bg_mom", "x0_err",
                                      "bg_err", "layers", "flips", "caps", "crops", "jitters", "fg_masked",
                                      "mask_lat", "n_fg", "n_bg", "video_clean")}
    with pytest.MonkeyPatch.context() as mp:
        warp = A._warp
        mp.setattr(A, "_warp", lambda x, theta, mode: (mode == "nearest" and warps.append(theta.clone()))
                   or warp(x, theta, mode))
        for k in range(N_CALLS):
            idx = [(B * k + j) % N_CLIPS for j in range(B)]
            b = batch(idx, cached, bg_latent)
            vae.seen.clear(), aug.outs.clear()
            crops0, jitters0 = aug.crops, aug.jitters
            x0, fg, bg, text, mask_lat = cond(b, idx, train.gen(0, k, 0, 0))
            # which layer reached the encoder, told by its mean (video ~ +4, bg ~ -4, fg in [-1, 1])
            layers = {}
            for x in vae.seen:
                mu = x.mean().item()
                layers.setdefault("video" if mu > 2 else "bg" if mu < -2 else "fg", []).append(x)
            if "fg" not in layers or "bg" not in layers and not bg_latent:
                pytest.fail(f"{path}: the layers that reached the encoder were {sorted(layers)}: fg"
                            + ("" if bg_latent else " and bg") + " must, every step")
            rec["layers"].append({n: len(v) for n, v in layers.items()})
            rec["video_clean"].append(cached or torch.equal(layers["video"][0],
                                                            torch.stack([CLEAN[i][0] for i in idx])))
            fg_clean = torch.stack([o[0] for o in aug.outs])
            m_aug = torch.stack([o[1] for o in aug.outs])
            fg_eps = layers["fg"][0] - fg_clean                        # the pixel noise added to the augmented fg
            if bg_latent:                                              # latent-space bg noise (the shortcut)
                bg_mean = torch.stack([-torch.full(bg.shape[1:], POST_MEAN + 0.01 * i) for i in idx])
                bg_eps = bg - bg_mean * scale
            else:
                bg_eps = layers["bg"][0] - torch.stack([CLEAN[i][1] for i in idx])
                rec["bg_err"].append(bg / scale - POST_MEAN)          # the bg latent: a posterior sample
            rec["n_fg"].append(fg_eps[0].numel()), rec["n_bg"].append(bg_eps[0].numel())
            dims = tuple(range(1, fg_eps.ndim))
            rec["fg_ls"].append(log_std(fg_eps, None).item()), rec["bg_ls"].append(log_std(bg_eps, None).item())
            rec["fg_ls_each"].append(log_std(fg_eps, dims)), rec["bg_ls_each"].append(log_std(bg_eps, dims))
            rec["fg_mom"].append(moments(fg_eps)), rec["bg_mom"].append(moments(bg_eps))
            x0_mean = (torch.tensor([POST_MEAN + 0.01 * i for i in idx]) if cached
                       else torch.full((B,), POST_MEAN))[:, None, None, None, None]
            rec["x0_err"].append(x0 / scale - x0_mean)
            rec["flips"].append([flipped(f, m) for f, m in aug.outs])
            rec["caps"].append((b["caption"], texts.calls[-1]))
            rec["crops"].append(aug.crops - crops0), rec["jitters"].append(aug.jitters - jitters0)
            lm_aug = diffusion.latent_mask(m_aug, vae.time, vae.space).expand_as(fg)
            rec["fg_masked"].append(bool((fg[lm_aug == 0] == 0).all() and (fg[lm_aug == 1] != 0).all()))
            rec["mask_lat"].append(torch.equal(mask_lat, diffusion.latent_mask(b["mask"], vae.time, vae.space)))
    rec["warps"] = warps
    return path, rec


def check_sigma_draw(ls, mean, what):
    """ls: one recovered log-sigma per call -> N(mean, 0.5): mean, spread, shape."""
    n = len(ls)
    ls_t = torch.tensor(ls, dtype=torch.float64)
    m, s = ls_t.mean().item(), ls_t.std().item()
    assert abs(m - mean) < 4 * 0.5 / math.sqrt(n), (what, m, mean)            # mean of n N(mean, 0.5)
    assert abs(s - 0.5) < 4 * 0.5 / math.sqrt(2 * (n - 1)), (what, s)         # its sample std
    d = ks(ls, normal_cdf(mean, 0.5))
    assert d < KS / math.sqrt(n), (what, d)


def test_pixel_noise_sigmas_follow_the_release(run):
    """fg sigma = exp(N(-1, 0.5)) on the augmented fg pixels, bg sigma = exp(N(-3, 0.5)) on the bg pixels (on the
    cached bg latent with --bg-noise-latent): recovered per call as std(noised - clean). The estimate's own error,
    1/sqrt(2 n) in log with n >= 8192 values a call, is < 0.008, negligible against the 0.5 spread."""
    path, rec = run
    check_sigma_draw(rec["fg_ls"], RELEASE.fg_noise, "fg")
    check_sigma_draw(rec["bg_ls"], RELEASE.bg_noise, "bg")
    # the two layers draw their own sigma: uncorrelated over the calls (|r| < 4 / sqrt(n))
    fg, bg = torch.tensor(rec["fg_ls"]), torch.tensor(rec["bg_ls"])
    r = torch.corrcoef(torch.stack([fg, bg]))[0, 1].item()
    assert abs(r) < 4 / math.sqrt(len(fg)), r


def test_one_sigma_per_call_not_per_sample(run):
    """The release draws sigma with shape (1,): every sample of a call has the same sigma. Per sample, log std
    has standard error 1/sqrt(2 n) (n values a sample); a difference of two sqrt(2) that; 7 of those is the
    bound. Per-sample sigmas (spread 0.5) would differ by ~0.5."""
    path, rec = run
    for key, n in (("fg_ls_each", rec["n_fg"][0]), ("bg_ls_each", rec["n_bg"][0])):
        spread = max((x.max() - x.min()).item() for x in rec[key])
        assert spread < 7 * math.sqrt(2) / math.sqrt(2 * n), (key, spread)


def test_pixel_noise_is_standard_normal_and_where_it_belongs(run):
    """eps is N(0, 1) (mean 0, kurtosis 3: uniform noise has 1.8) and each layer reaches the encoder once per
    call: video (not noised) only without the cache, bg pixels unless the bg latent is cached, fg always."""
    path, rec = run
    for key in ("fg_mom", "bg_mom"):
        means, kurt = zip(*rec[key])
        n = sum(rec["n_fg" if key == "fg_mom" else "n_bg"]) * B
        assert abs(sum(means) / len(means)) < 4 / math.sqrt(n), key
        # the sample kurtosis of n normals has standard error sqrt(24 / n); the mean of the per-call ones too
        assert abs(sum(kurt) / len(kurt) - 3) < 4 * math.sqrt(24 / n), (key, sum(kurt) / len(kurt))
    want = {"uncached": {"video": 1, "bg": 1, "fg": 1}, "cached": {"bg": 1, "fg": 1},
            "cached-bg-latent": {"fg": 1}}[path]
    assert all(layers == want for layers in rec["layers"]), rec["layers"][0]
    assert all(rec["video_clean"])             # the clip itself is encoded as it is: no pixel noise on x0


def test_posterior_draws(run):
    """x0 (cached: mean + exp(logvar / 2) eps; uncached: vae.sample_latent) and the encoded bg are posterior
    samples with std 0.5 around the mean: pooled over every latent value (n >= 2.4M), std within
    4 / sqrt(2 n) relative, mean within 4 * 0.5 / sqrt(n)."""
    path, rec = run
    for key in ("x0_err", "bg_err"):
        if not rec[key]:
            continue
        e = torch.cat([x.flatten() for x in rec[key]]).double()
        n = e.numel()
        assert abs(e.std().item() / POST_STD - 1) < 4 / math.sqrt(2 * n), (key, e.std().item())
        assert abs(e.mean().item()) < 4 * POST_STD / math.sqrt(n), (key, e.mean().item())


def test_fg_latent_is_masked_with_the_augmented_mask(run):
    """The fg latent is zero exactly outside latent_mask(augmented mask) (the release's mask_augmented); the mask
    returned for the identity loss is the un-augmented one (the target video is not augmented)."""
    path, rec = run
    assert all(rec["fg_masked"]) and all(rec["mask_lat"])


def test_text_dropout_per_sample(run):
    """text_drop 0.1 (the toy composer's): a prompt is "" with frequency 0.1 (4 SE over 1200 prompts), each
    sample on its own draw (a call keeps all 4 prompts or drops all 4 with P = 0.9^4 + 0.1^4 = 0.6562, not 1:
    4 SE over the calls), and a kept prompt is the sample's own caption."""
    path, rec = run
    n = drops = same = 0
    for caps, got in rec["caps"]:
        assert len(got) == len(caps) and all(g in ("", c) for g, c in zip(got, caps))
        d = [g == "" for g in got]
        n, drops, same = n + len(d), drops + sum(d), same + (len(set(d)) == 1)
    assert abs(drops / n - 0.1) < four_se(0.1, n), drops / n
    p_same, calls = 0.9 ** 4 + 0.1 ** 4, len(rec["caps"])
    assert abs(same / calls - p_same) < four_se(p_same, calls), same / calls


def test_flip_crop_jitter_frequencies(run):
    """Per sample, with the training Augment: flips (read off the ramp's direction in the augmented fg) with
    p 0.7, re-framing runs with p 0.7, colour jitter with p 0.2 (4 SE over 1200 samples); each sample draws its own
    flip (a call is all-flipped or none-flipped with P = 0.7^4 + 0.3^4 = 0.2482; 4 SE over the calls)."""
    path, rec = run
    flips = [f for call in rec["flips"] for f in call]
    n = len(flips)
    assert abs(sum(flips) / n - RELEASE.flip_p) < four_se(RELEASE.flip_p, n), sum(flips) / n
    assert abs(sum(rec["crops"]) / n - RELEASE.crop_p) < four_se(RELEASE.crop_p, n), sum(rec["crops"]) / n
    jp = training_augment().jitter_p
    assert abs(sum(rec["jitters"]) / n - jp) < four_se(jp, n), sum(rec["jitters"]) / n
    same, calls = sum(len(set(c)) == 1 for c in rec["flips"]), len(rec["flips"])
    p_same = 0.7 ** 4 + 0.3 ** 4
    assert abs(same / calls - p_same) < four_se(p_same, calls), same / calls


def test_reframing_zoom_and_placement(run):
    """Every re-framing attempt's window (the theta of its mask warp): zoom z = W / w log-uniform on
    [0.5, 2.0]; the window's offset a uniform share of its slack, top = (H - h) u (inside the frame when
    zooming in, around it when zooming out), u drawn apart for rows and columns (|r| < 4 / sqrt(n))."""
    path, rec = run
    lo, hi = (math.log(s) for s in RELEASE.crop_scale)
    logz, py, px = [], [], []
    for th in rec["warps"]:
        w, h = th[0, 0].item() * W, th[1, 1].item() * H
        assert abs(w / W - h / H) < 1e-6                       # one zoom for both axes
        left, top = ((th[0, 2].item() + 1) * W - w) / 2, ((th[1, 2].item() + 1) * H - h) / 2
        logz.append(math.log(W / w))
        if abs(W - w) > 0.5:                                    # a window of another size than the frame
            py.append(top / (H - h)), px.append(left / (W - w))
    n = len(logz)
    assert n >= sum(rec["crops"]) > 0                          # one attempt or more per re-framing
    assert lo - 1e-6 <= min(logz) and max(logz) <= hi + 1e-6, (min(logz), max(logz))
    assert ks(logz, uniform_cdf(lo, hi)) < KS / math.sqrt(n)
    assert min(py + px) >= -1e-6 and max(py + px) <= 1 + 1e-6, (min(py + px), max(py + px))
    assert ks(py, uniform_cdf(0, 1)) < KS / math.sqrt(len(py)) and ks(px, uniform_cdf(0, 1)) < KS / math.sqrt(len(px))
    r = torch.corrcoef(torch.tensor([py, px]))[0, 1].item()
    assert abs(r) < 4 / math.sqrt(len(py)), r


# ---------------------------------------------------------------------------------------------
# Cheap ones: colour jitter factors, the flip detector, timesteps, prompt drop at the release default, data order


def yiq(rgb):
    to = torch.tensor([LUMA, [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
    return to @ rgb.double()


def test_colour_jitter_factor_ranges():
    """The training Augment's jitter (flip and crop off, jitter forced on): brightness, contrast, saturation
    factors uniform on [0.8, 1.2], hue uniform on [-0.2, 0.2] turns (paper.yaml: 0.2 each). Recovered from the
    output of a subject of two grey levels (0.4, 0.6 in [0, 1]) tinted by one small chroma (no clamping anywhere):
    the four operations commute on it, so luma gives brightness (mean scaled by b) and contrast (spread scaled by
    b c), and the chroma vector is scaled by b c s and rotated by the hue angle."""
    aug = dataclasses.replace(training_augment(), flip_p=0, crop_p=0, jitter_p=1)
    assert (aug.brightness, aug.contrast, aug.saturation, aug.hue, training_augment().jitter_p) == (0.2,) * 5
    d = torch.linalg.inv(yiq(torch.eye(3))) @ torch.tensor([0.0, 0.05, 0.03], dtype=torch.float64)   # luma 0
    mask = torch.zeros(1, 1, 8, 8)
    mask[..., 2:6, 1:7] = 1
    lum = torch.full((8, 8), 0.5)
    lum[2:6, 1:4], lum[2:6, 4:7] = 0.4, 0.6
    x01 = lum[None, None] + d.float()[:, None, None, None]                      # (3, 1, 8, 8) in [0, 1]
    fg = (x01 * 2 - 1) * mask + (mask - 1)
    c0 = yiq(x01[:, 0, 3, 1])[1:]                                               # the chroma before
    b, c, s, hue = [], [], [], []
    n = 400
    for seed in range(n):
        out, _ = aug(fg, mask, torch.Generator().manual_seed(seed))
        y = yiq(((out[:, 0] + 1) / 2).reshape(3, -1)).reshape(3, 8, 8)
        dark, bright = y[0, 2:6, 1:4].mean().item(), y[0, 2:6, 4:7].mean().item()
        b.append((dark + bright) / 2 / 0.5)
        c.append((bright - dark) / 0.2 / b[-1])
        c1 = y[1:, 3, 1]
        s.append((c1.norm() / c0.norm()).item() / (b[-1] * c[-1]))
        hue.append(math.atan2(c0[0] * c1[1] - c0[1] * c1[0], c0 @ c1) / (2 * math.pi))
    for name, xs, lo, hi in (("brightness", b, 0.8, 1.2), ("contrast", c, 0.8, 1.2), ("saturation", s, 0.8, 1.2),
                             ("hue", hue, -0.2, 0.2)):
        assert lo - 1e-4 <= min(xs) and max(xs) <= hi + 1e-4, (name, min(xs), max(xs))
        assert ks(xs, uniform_cdf(lo, hi)) < KS / math.sqrt(n), name


@pytest.mark.parametrize("scale", [(1.25, 2.0), (0.5, 0.8)], ids=["zoom-in", "zoom-out"])
def test_zoom_direction_follows_crop_scale(monkeypatch, scale):
    """--crop-scale > 1 crops in (the subject grows), < 1 zooms out (it shrinks): on a one-sided range every
    drawn window has W / w inside the range, and every accepted crop scales the subject's area by z^2 times the
    share kept (0.9..1), give or take the nearest-neighbour rounding of its edges (a pixel a side, bounded here by
    20 %). The release's range is symmetric in log, where a zoom applied the wrong way round draws the same law:
    only a one-sided range tells the directions apart."""
    windows, warp = [], A._warp
    monkeypatch.setattr(A, "_warp", lambda x, theta, mode: (windows.append((mode, theta.clone())) or
                                                            warp(x, theta, mode)))
    aug = dataclasses.replace(training_augment(), flip_p=0, crop_p=1, jitter_p=0, crop_scale=scale)
    accepted = 0
    for seed in range(40):
        fg, m = SPRITES[seed % N_CLIPS]
        windows.clear()
        _, m2 = aug(fg, m, torch.Generator().manual_seed(seed))
        zs = [W / (th[0, 0].item() * W) for mode, th in windows if mode == "nearest"]
        assert zs and all(scale[0] - 1e-6 <= z <= scale[1] + 1e-6 for z in zs), zs
        if any(mode == "bilinear" for mode, _ in windows):
            accepted += 1
            ratio, z = (m2.sum() / m.sum()).item(), zs[-1]
            assert 0.9 * z * z * 0.8 <= ratio <= z * z * 1.2, (seed, z, ratio)
    assert accepted >= 20


def test_flip_detector_reads_flips_under_crop_and_jitter():
    """The detector the frequency test relies on: right on every sample when flips are forced on or off, with
    re-framing and jitter always on."""
    for flip in (0, 1):
        aug = dataclasses.replace(training_augment(), flip_p=flip, crop_p=1, jitter_p=1)
        for seed in range(30):
            fg, m = SPRITES[seed % N_CLIPS]
            assert flipped(*aug(fg, m, torch.Generator().manual_seed(seed))) == bool(flip), (flip, seed)


def test_timesteps_uniform_over_all_1000():
    """Schedule.sample_t, the loop's draw (test_training_loop_draws checks the loop feeds it to the DiT): uniform
    on 0..999. 200k draws: every value appears (a missing end value has P ~ 1000 e^-200), Pearson's chi-square
    over the 1000 values below df + 6 sqrt(2 df), and the CDF within the KS bound of the discrete uniform."""
    n = 200_000
    t = diffusion.Schedule().sample_t(n, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long
    counts = torch.bincount(t, minlength=1000).double()
    assert counts.numel() == 1000 and (counts > 0).all() and t.min() == 0 and t.max() == 999
    chi2 = ((counts - n / 1000) ** 2 / (n / 1000)).sum().item()
    assert chi2 < 999 + 6 * math.sqrt(2 * 999), chi2
    ecdf = counts.cumsum(0) / n
    assert (ecdf - torch.arange(1, 1001) / 1000).abs().max().item() < KS / math.sqrt(n)


def test_input_perturbation_moves_x_t_not_the_target():
    """train.noised_latent, the loop's x_t: without --input-perturbation exactly add_noise(x0, eps) with one draw
    from the step's generator (the runs before the flag, unchanged); with G = 0.1 (DDPM-IP) x_t leaves the forward
    path by sqrt(1 - a_t) G xi, xi a second standard normal draw (24576 values: mean within 4 / sqrt(n), std within
    4 / sqrt(2 n)); test_single_process_with_cache_and_ablations checks the loop passes the flag. (Mutation tried:
    noised_latent ignoring perturb -> the residual is 0 and this fails.)"""
    sched = diffusion.Schedule()
    x0 = torch.randn(8, 16, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    t = sched.sample_t(8, generator=torch.Generator().manual_seed(2))
    assert train.parser.parse_args(["--data", "unused"]).input_perturbation == 0.0
    g, ref = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    eps = torch.randn(x0.shape, generator=ref)
    assert torch.equal(train.noised_latent(sched, x0, t, g), sched.add_noise(x0, eps, t))
    assert torch.equal(g.get_state(), ref.get_state())                      # no extra draw
    g = torch.Generator().manual_seed(3)
    xt = train.noised_latent(sched, x0, t, g, 0.1)
    sigma = (1 - sched.alphas_cumprod[t]).sqrt().float().view(-1, 1, 1, 1, 1)
    xi = (xt - sched.add_noise(x0, eps, t)) / (0.1 * sigma)
    n = xi.numel()
    assert abs(xi.mean().item()) < 4 / math.sqrt(n) and abs(xi.std().item() - 1) < 4 / math.sqrt(2 * n)
    assert not torch.allclose(xi, eps)                                      # a second draw, not eps again


def test_release_defaults_and_no_prompt_drop():
    """The flags' defaults are the release's recipe, and at the default prompt drop (0.0) no prompt is ever
    empty."""
    a = RELEASE
    assert (a.fg_noise, a.bg_noise, a.text_drop, a.flip_p, a.crop_p, tuple(a.crop_scale)) == \
        (-1.0, -3.0, 0.0, 0.7, 0.7, (0.5, 2.0))
    texts = Texts()
    cond = train.Conditioner(probe_vae(), texts, Augment(flip_p=0, crop_p=0, jitter_p=0), fg_noise=a.fg_noise,
                             bg_noise=a.bg_noise, text_drop=a.text_drop, cache=None, bg_noise_latent=False)
    for k in range(50):
        cond(batch([k % N_CLIPS, (k + 1) % N_CLIPS]), [k % N_CLIPS, (k + 1) % N_CLIPS], train.gen(0, k, 0, 0))
    assert len(texts.calls) == 50 and all(p for call in texts.calls for p in call)


def test_epoch_order_is_a_fresh_uniform_permutation():
    """Data order: each epoch a permutation of its own; where clip 0 lands is uniform over the n = 10 places
    (chi-square over 2000 epochs below df + 6 sqrt(2 df), df = 9)."""
    n, epochs = 10, 2000
    counts = torch.zeros(n)
    for e in range(epochs):
        order = train.epoch_order(n, 3, e)
        assert sorted(order) == list(range(n))
        counts[order.index(0)] += 1
    chi2 = ((counts - epochs / n) ** 2 / (epochs / n)).sum().item()
    assert chi2 < 9 + 6 * math.sqrt(18), chi2


# ---------------------------------------------------------------------------------------------
# The training loop itself: the flags reach the Conditioner, the drawn t reaches the DiT


def main_recording_conditioner(monkeypatch, argv, calls=None):
    """train.main on these flags with its Conditioner recorded -> (the parsed flags, the arguments the Conditioner was
    built with); each of its calls appends (batch indices, generator, the generator's state) to `calls` if given.
    torch's thread count is restored afterwards (--threads sets it)."""
    init, Cond = {}, train.Conditioner

    class Recording(Cond):
        def __init__(self, *a, **k):
            init.update(inspect.signature(Cond).bind(*a, **k).arguments)
            super().__init__(*a, **k)

        def __call__(self, b, idx, g):
            if calls is not None:
                calls.append((list(idx), g, g.get_state().clone()))
            return super().__call__(b, idx, g)
    monkeypatch.setattr(train, "Conditioner", Recording)
    a, n_threads = train.parser.parse_args(argv), torch.get_num_threads()
    try:
        train.main(a)
    finally:
        torch.set_num_threads(n_threads)
    return a, init


@pytest.mark.slow
def test_training_loop_draws(tiny_data, tmp_path, monkeypatch):
    """train.main with the release's flags (toy sizes, 3 steps of 2): the Conditioner gets fg -1.0, bg -3.0, prompt
    drop 0.0 and the training Augment (flip 0.7, crop 0.7 in [0.5, 2], jitter 0.2) on the uncached path; each step
    draws its batch with batch_indices and its randomness from gen(seed, step, rank, micro), and the DiT gets the
    t that Schedule.sample_t (5B schedule) drew from that step's generator, and x_t = add_noise(x0, eps, t) with
    eps ~ N(0, 1) (24576 values a step: mean within 4 / sqrt(n), std within 4 / sqrt(2 n))."""
    seen = {"cond": [], "t": [], "noise": [], "model": []}
    sample_t, add_noise, forward = diffusion.Schedule.sample_t, diffusion.Schedule.add_noise, dit.DiT.forward

    def rec_sample_t(self, batch, generator=None, device=None):
        t = sample_t(self, batch, generator=generator, device=device)
        seen["t"].append((batch, generator, t.clone(), self.alphas_cumprod))
        return t

    def rec_add_noise(self, x0, noise, t):
        xt = add_noise(self, x0, noise, t)
        seen["noise"].append((noise.clone(), t.clone(), xt.clone()))
        return xt

    def rec_forward(self, x, text, t, *a, **k):
        seen["model"].append((x[:, :16].clone(), torch.as_tensor(t).clone()))
        return forward(self, x, text, t, *a, **k)
    monkeypatch.setattr(diffusion.Schedule, "sample_t", rec_sample_t)
    monkeypatch.setattr(diffusion.Schedule, "add_noise", rec_add_noise)
    monkeypatch.setattr(dit.DiT, "forward", rec_forward)
    steps, bs = 3, 2
    a, init = main_recording_conditioner(monkeypatch, [
        "--data", str(tiny_data), "--preset", "toy", "--out", str(tmp_path / "run"), "--steps", str(steps), "--batch",
        str(bs), "--val-every", "0", "--ckpt-every", "1000", "--log-every", "1000", "--workers", "1", "--threads", "1"],
        calls=seen["cond"])
    assert (init["fg_noise"], init["bg_noise"], init["text_drop"]) == (-1.0, -3.0, 0.0)
    assert init["augment"] == training_augment() and init.get("cache") is None
    assert not init.get("bg_noise_latent", False)
    assert len(seen["cond"]) == len(seen["t"]) == len(seen["noise"]) == len(seen["model"]) == steps
    five_b = diffusion.Schedule().alphas_cumprod
    for step, ((idx, g, state), (nb, tg, t, abar), (eps, t2, xt), (x_in, t_in)) in enumerate(
            zip(seen["cond"], seen["t"], seen["noise"], seen["model"])):
        assert idx == train.batch_indices(len(LayeredClips(a.data, frames=9, size=(64, 64))), step, 0, 0, 1, bs, 1,
                                          a.seed)
        assert torch.equal(state, train.gen(a.seed, step, 0, 0).get_state())
        assert nb == bs and tg is g and torch.equal(abar, five_b)           # the step's generator, the 5B schedule
        assert torch.equal(t2, t) and torch.equal(t_in.expand(bs), t) and torch.equal(x_in, xt)
        n = eps.numel()
        assert abs(eps.mean().item()) < 4 / math.sqrt(n) and abs(eps.std().item() - 1) < 4 / math.sqrt(2 * n)
    ts = torch.cat([x[2] for x in seen["t"]])
    assert ts.unique().numel() > 1 and ts.min() >= 0 and ts.max() <= 999


@pytest.mark.slow
def test_training_loop_builds_the_augment_its_flags_ask_for(tiny_data, tmp_path, monkeypatch):
    """train.main with non-default augmentation flags (one step of 2) gives the Conditioner exactly the Augment they
    describe, --crop-shift included (a flag dropped on its way in would leave the release's default there)."""
    _, seen = main_recording_conditioner(monkeypatch, [
        "--data", str(tiny_data), "--preset", "toy", "--out", str(tmp_path / "run"), "--steps", "1", "--batch", "2",
        "--val-every", "0", "--workers", "1", "--threads", "1", "--flip-p", "0.1", "--crop-p", "0.9", "--crop-scale",
        "1", "1", "--crop-shift", "0.25"])
    assert seen["augment"] == Augment(flip_p=0.1, crop_p=0.9, crop_scale=(1.0, 1.0), crop_shift=0.25)
    assert seen["augment"] != training_augment()
