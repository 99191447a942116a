// SPDX-License-Identifier: GPL-3.0-or-later
// Stands in for agor-daemon: stays in the foreground until stopped, and says when it is up.
process.on("SIGTERM", () => process.exit(0));
console.log(`agor daemon ready (pid ${process.pid})`);
setInterval(() => {}, 1 << 30);
