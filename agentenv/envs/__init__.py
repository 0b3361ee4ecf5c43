"""The environments shipped with agentenv (each registered with gymnasium by `agentenv.registration`)."""
