"""The lab's inference-side studies (sweep, zoo, serving benchmarks), and :mod:`studies.kit`, the kit
every study of the lab is built on (loadgen's and trainer's too). Nothing here is imported by the
server (:mod:`service`)."""
