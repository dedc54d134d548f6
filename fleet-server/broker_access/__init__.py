"""The broker's access rules, kept by the fleet server: who may connect, and to which topics.

Mosquitto's dynamic-security plugin holds the accounts; the fleet server drives it over the broker's
own `$CONTROL` topic (`dynsec`), writes the broker's first configuration (`mosquitto_files`), makes the
development PKI (`pki`) and reads the broker's log topic for refused attempts (`broker_log`).
Why dynamic security rather than generated password and ACL files: revoking a box must cut it off
within seconds, and Mosquitto 2.0 re-reads a password file on SIGHUP without disconnecting the
clients already connected, whereas `disableClient` kicks the box at once; the plugin also binds a
box's account to its client id, so no box can take over another's session. docs/broker-access.md
has the full reasoning.
"""
