#!/usr/bin/env bash
# Install Debian's Chromium and CJK fonts for the widget's browser test.
# Playwright's own browser download cannot work offline, so we never use it.
# Failure here is not fatal: the browser test then skips with a loud reason.
set -u
if [ -x /usr/bin/chromium ] && fc-list 2>/dev/null | grep -qi "noto.*cjk"; then
  exit 0
fi
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
echo "browser-deps: installing chromium and fonts-noto-cjk from Debian"
{ $SUDO apt-get update -qq && $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk; } \
  >/tmp/kefu-browser-deps.log 2>&1 || echo "browser-deps: install failed (see /tmp/kefu-browser-deps.log); browser tests will skip"
exit 0
