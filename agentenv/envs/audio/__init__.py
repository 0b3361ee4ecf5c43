"""AudioReasoning-v0: SoundMind/ALR-style audio reasoning on real 16 kHz waveforms.

Modules, one stage each: `signals` (synthesis, WAV I/O, resampling), `speech` (espeak-ng), `logic`
(syllogism rule engine), `tasks` (seeded task generators and difficulty), `alr` (loader for the real ALR
layout), `analysis` (numpy signal analysis), `tools` (analysis as agent tools), `reward` (corrected
SoundMind reward), `env` (the Gymnasium env) and `scripted` (reference agents: through the tools, or listening
to the waveform itself). The policy that hears the clip is `agentenv.policies.audio_lm.AudioLMPolicy`.
"""

from agentenv.envs.audio.env import AudioReasoningEnv
from agentenv.envs.audio.reward import RewardWeights, score_response
from agentenv.envs.audio.tasks import KINDS, LEVELS, SPEECH_KINDS, TONE_KINDS, AudioTask, Difficulty
from agentenv.envs.audio.tools import AUDIO_TOOL_NAMES, AudioToolbox

__all__ = [
    "AudioReasoningEnv", "AudioTask", "Difficulty", "LEVELS", "KINDS", "TONE_KINDS", "SPEECH_KINDS",
    "RewardWeights", "score_response", "AudioToolbox", "AUDIO_TOOL_NAMES",
]
