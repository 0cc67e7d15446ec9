"""The OpenAI wire format, shared by the sidecar and the Python client:
request parsing (:mod:`.requests`), response shapes (:mod:`.shapes`) and tool
calling / structured output (:mod:`.tools`)."""
