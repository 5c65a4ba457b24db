"""A fleet in one box against a real etcd: what a restart storm does to it, and what the gate does.

``simulate`` counts what each restart policy asks of the control plane on a model. This lab asks
a real one: an etcd of its own (Debian's ``etcd-server`` 3.4, cilium's kvstore) filled with a
cilium-like keyspace, N stand-in agents that each do a full resync at start and then watch,
supervised four ways (a restart loop, kubelet's CrashLoopBackOff, the gate, the gate with a
probe), and two events: an *outage* (etcd down for D, then back on the same data) and a
*crash on a live etcd* (every agent killed in the same instant while etcd stays up). Per
scenario and policy: full resyncs etcd served (its own ``/metrics``, less the probe's small
ranges), failed starts, when every agent was healthy again, the probe's requests; and
``simulate`` beside it on the same N, D, C and W.

How it goes: fill etcd (timed); measure what it can serve (closed-loop full resyncs at 1, 2, 4,
8 clients: C is the best rate at which no resync exceeded the client timeout) and what the
probe's limit-1 range costs meanwhile, from which ``probe.max_latency`` is chosen
(:mod:`.capacity`); pick the window W (production's ratio, 5000 nodes / 60 min, or ``plan``'s
for C if longer); then run every fleet (:mod:`.scenarios`): set up, settle into a long-running
fleet, the event, the watch until healthy or a bound. Each fleet has an etcd of its own on a
copy of the filled data; ``--nested`` runs fleets side by side, never two set up or measured at
once.

The parts:

- :mod:`.base`: constants, the lab's error, clock and log, processes that die with the lab;
- :mod:`.etcd`: the lab's etcd (loopback, free ports, a memory cap);
- :mod:`.keyspace`: cilium's keyspace, and filling etcd with it;
- :mod:`.agent`: the stand-in agent (a script: stdlib only, ``python -I -S``);
- :mod:`.sampler`: the probe asked again and again (a script: the gate's own probe code);
- :mod:`.capacity`: what etcd serves, and the probe's ``max_latency``;
- :mod:`.fleet`: N agents under one supervision;
- :mod:`.scenarios`: the events, and the schedule of the fleets;
- :mod:`.metrics`: etcd's ``/metrics``; :mod:`.summary`: one fleet's figures;
- :mod:`.report`: the tables, the crash-live target, ``simulate`` beside; :mod:`.plot`;
- :mod:`.cli`: the command line.

Safety: etcd listens on 127.0.0.1 only, on ports the OS picked free, with its data in a
temporary directory; every process the lab starts is stopped by its own pid (and dies with the
lab: ``setpriv --pdeathsig``), never by name; every wait is bounded; SIGTERM ends the lab as
Ctrl-C does.

    python bench/lab                      # N=200, both scenarios, every policy; bench/lab-*.png
    python bench/lab --nested             # the same figures, in far less time
    python bench/lab --agents 20 --fleets crash-live,outage:restart-loop
    python -m bench.lab --help            # the same program, from the repository's root
"""
