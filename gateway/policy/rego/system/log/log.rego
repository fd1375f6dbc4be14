# METADATA
# title: Decision-log masking (reserved)
# description: |
#   Added by the control plane to every bundle. OPA evaluates data.system.log.mask
#   for every logged decision, with the log event as input, before the event is
#   written or uploaded. Raw tool and prompt arguments and token claims never
#   reach a log; sub, roles, scopes, client_id and the identity of the server and
#   of the tool, resource or prompt stay.
package system.log

# METADATA
# description: |
#   JSON pointers OPA erases from each decision-log event: the request's arguments
#   (tool arguments, completion values), the prompt arguments and the verified
#   token claims. Pointers to absent paths are ignored by OPA.
mask contains "/input/arguments"

mask contains "/input/prompt/arguments"

mask contains "/input/subject/claims"
