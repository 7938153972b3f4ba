#!/bin/sh
# Creates (or updates) broker users for a service run with AMQP_REQUIRE_USER_ID=true:
# each user may publish requests through the default exchange, and declare and read
# only its own reply queues, serve_ex.reply.<user>.*; nothing else.
#
#   serve_ex/scripts/broker_users.sh alice bob        # password = the user name (local tests)
#   PASSWORD=secret serve_ex/scripts/broker_users.sh alice
set -eu
[ "$#" -gt 0 ] || { echo "usage: $0 USER..." >&2; exit 2; }
for user in "$@"; do
  case "$user" in
    *[!A-Za-z0-9_-]*|"") echo "error: a user name is letters, digits, _ or -; got '$user'" >&2; exit 2 ;;
  esac
  password="${PASSWORD:-$user}"
  rabbitmqctl -q add_user "$user" "$password" >/dev/null 2>&1 ||
    rabbitmqctl -q change_password "$user" "$password"
  own="^serve_ex\\.reply\\.$user\\..*\$"
  rabbitmqctl -q set_permissions -p / "$user" "$own" '^amq\.default$' "$own"
  echo "broker user $user: publishes requests, reads its own reply queues serve_ex.reply.$user.*"
done
