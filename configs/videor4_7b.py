"""The Video-R4 recipe for Qwen2.5-VL-7B-Instruct: DRP-SFT -> RL_d -> CRP-SFT -> RL_c on a TPU slice.

    python -m videor4_jax.data.build videor4_trajectories --manual_dir TRAJ --data_dir DATA
    python -m videor4_jax.data.build m4_vitevqa/task1_split1 --manual_dir M4 --data_dir DATA
    python train.py --config configs/videor4_7b.py --config.init_from=CKPT --config.data.data_dir=DATA
    python train.py --config configs/videor4_7b.py --config.init_from=CKPT --aot_topology=v5p:2x2x4   # fit check

CKPT is a local HF directory (config.json, tokenizer, chat template, preprocessor configs, safetensors); nothing
is downloaded. The paper publishes none of these hyper-parameters (PAPER: "not found for Video-R4"); each value
below says which system it comes from: Video-R1 (Qwen2.5-VL-7B, TRL GRPO, qwen-vl-utils), Pixel-Reasoner
(Qwen2.5-VL-7B, tool calls), TRL's GRPOTrainer defaults, or "ours" where no source gives one. Sized for
v5p:2x2x4 (16 chips): `train.py --aot_topology` reports per-chip memory and roofline step time (README, "Train the
Video-R4 recipe on a TPU slice").
"""
import ml_collections

QWEN25_VL_7B = dict(   # Qwen/Qwen2.5-VL-7B-Instruct config.json (the checkpoint's own config.json wins)
    text=dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
              num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000,
              rms_norm_eps=1e-6, rope_theta=1000000.0, mrope_section=(16, 24, 24)),
    vision=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_channels=3, patch_size=14,
                spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=3584,
                fullatt_block_indexes=(7, 15, 23, 31), tokens_per_second=2),
    tie_word_embeddings=False,
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)

OBS_HW = (308, 308)    # a re-encoded crop or clip frame: 121 tokens (11 x 11 merged patches)


def get_config(model: dict = QWEN25_VL_7B, workdir: str = "runs/videor4_7b") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.workdir = workdir
  c.init_from = ""                 # required: the HF checkpoint directory (weights, config, processor files)
  c.init_required = True           # an empty init_from is an error, not a random-init 7B with the tiny tokenizer
  c.tokenizer = ""                 # "" = the checkpoint's own tokenizer and chat template
  c.system_prompt = "default"      # processing/chat.py SYSTEM_PROMPT (the tool grammar the rollout executes)
  c.export_dtype = ""              # final_hf in the checkpoint's dtype (bf16 for the hub's checkpoints)
  c.export_max_shard_mb = 4096     # the hub's shard size for Qwen2.5-VL-7B
  # Vision preprocessing applied over the checkpoint's preprocessor_config.json (logged). Video frames: Video-R1's
  # qwen-vl-utils training setting, 128*28*28 pixels per frame (a 720p frame -> 224x420, 120 tokens per 2-frame
  # group); its minimum is lowered to HF's 4*28*28 so that a 308x308 clip frame is a fixed point of the video rule
  # (the rollout feeds observations at obs_hw; convert/resolve.check_compatible). Images: Video-R1's 4*28*28 ..
  # 256*28*28 (a 308x308 crop is a fixed point).
  c.processor_overrides = dict(video_min_pixels=4 * 28 * 28, video_max_pixels=128 * 28 * 28,
                               image_min_pixels=4 * 28 * 28, image_max_pixels=256 * 28 * 28)
  # attention_q_chunk (ours): the GRPO step's teacher-forced forward over 8 rows x 5120 slots per chip would hold
  # [rows, 28, S, S] float32 scores of 23.5 GB per layer; in 512-query chunks, 2.3 GB (README: the step takes
  # 42.8 GiB per v5p chip with it, train.py --aot_topology=v5p:2x2x4).
  c.model = dict(model, dtype="bfloat16", param_dtype="float32", scan_layers=True, remat="full",
                 initializer_range=0.02, attention_q_chunk=512)
  # RL prompts and evaluation: M4-ViteVQA (PAPER: Video-R4 evaluates on its Task1 Split1 / Split2 / Task2).
  # SFT stages read the trajectories data set (stage `data` below).
  c.data = dict(name="m4_vitevqa/task1_split1", data_dir="", seed=0)
  c.pipeline = dict(
      batch_size=16,
      num_frames=16,               # qwen-vl-utils FPS_MAX_FRAMES (Video-R1)
      source_hw=(448, 448),        # ours: the uint8 view crops and clips are cut from (2 source px per obs px)
      max_prompt_tokens=1280,      # system prompt + <= 1024 video tokens (16 frames) + question
      max_seq_tokens=5120,         # a whole SFT conversation: prompt + 4 actions with their observations
      obs_hw=OBS_HW, max_observations=4, max_clip_frames=8, max_answers=10, max_answer_bytes=128,
      padding_side="left", worker_count=0)
  c.rollout = dict(
      max_steps=5,                 # Pixel-Reasoner: at most 4 executed tool calls, then the answer
      max_step_tokens=256,         # ours: one think + call segment (Video-R1 caps a whole completion at 768)
      cache_len=5120, obs_hw=OBS_HW,
      max_clip_frames=8,           # Pixel-Reasoner select_frames: no more than 8 frames
      crop_margin=0.1,             # Pixel-Reasoner pads a crop box by 0.1 on each side
      crop_min_px=28,              # Pixel-Reasoner: a crop must be > 28 px on both sides
      clip_seconds_per_group=1.0, temperature=1.0, top_p=1.0,
      compact_rows="auto")         # off when rows are sharded over devices (rumination/config.py)
  c.grpo = dict(
      num_generations=8,           # Video-R1 num_generations 8; Pixel-Reasoner n_samples_per_prompt 8
      beta=0.04,                   # Video-R1 (TRL) KL coefficient
      eps_low=0.2, eps_high=0.2,   # TRL / Pixel-Reasoner eps_clip 0.2
      aggregation="seq_mean_token_mean",   # the GRPO objective as Video-R1 optimizes it (PAPER section 5.7)
      num_inner_steps=1, temperature=1.0,  # Video-R1 temperature 1.0
      std_normalize=True, adv_eps=1e-4, adv_std_ddof=1,    # TRL's advantage normalization (sample std + 1e-4)
      filter_zero_variance=True,   # Pixel-Reasoner filters zero-advantage groups
      skip_uninformative=True, dynamic_sampling=False, max_draws=1, max_len=0)
  sft = dict(kind="sft", data="videor4_trajectories", lr=1e-6,   # Video-R1 / Pixel-Reasoner SFT lr, cosine
             batch_size=16,        # Pixel-Reasoner: 1 per device x grad-accum 2 x 8 GPUs
             freeze_vision=True)   # Pixel-Reasoner freezes the vision tower in SFT
  # Steps: about one epoch of Video-R4-CoT-17k's half of each kind at batch 16 (ours; Video-R1 trains 1 epoch),
  # warmup 10% (Pixel-Reasoner warmup_ratio 0.1). RL: 8,000 prompts per stage of RL-30k (ours).
  rl = dict(kind="grpo", data="m4_vitevqa/task1_split1", trajectories="all", lr=1e-6,   # Video-R1 RL lr
            batch_size=16, warmup_steps=0, freeze_vision=True)
  c.curriculum = "drp_sft,rl_d,crp_sft,rl_c"
  c.stages = dict(
      drp_sft=dict(sft, trajectories="deliberate", steps=530, warmup_steps=53),
      # Rewards (PAPER 4.1: which terms each stage uses is not known; its guess): R + curiosity in RL_d, all four
      # in RL_c. Curiosity constants H = 0.3, N = 1, alpha = 0.5, beta = 0.05 (Pixel-Reasoner; RewardConfig).
      # ANLS accuracy (the M4-ViteVQA metric), format weight 0.5 and lambda_div = lambda_rep = 0.1 are ours.
      rl_d=dict(rl, steps=500, rewards=dict(accuracy="anls", w_format=0.5, w_div=0.0, w_rep=0.0, w_cur=1.0)),
      crp_sft=dict(sft, trajectories="compositional", steps=530, warmup_steps=53),
      rl_c=dict(rl, steps=500, rewards=dict(accuracy="anls", w_format=0.5, w_div=0.1, w_rep=0.1, w_cur=1.0)),
  )
  c.eval = dict(split="test", num_examples=512, batch_size=16, data="m4_vitevqa/task1_split1")
  c.mesh_shape = (1, -1, 1)        # FSDP over every chip (data, fsdp, tensor)
  c.clip_norm = 1.0                # TRL GRPOTrainer max_grad_norm
  c.weight_decay = 0.01            # Video-R1 RL weight_decay
  c.log_every = 10
  c.checkpoint_every = 50
  c.keep_checkpoints = 2
  return c
