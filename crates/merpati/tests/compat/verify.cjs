// Checks captured merpati deliveries with the official Standard Webhooks verifier (npm).
// Usage: NODE_PATH=DIR/node_modules node verify.cjs CASES.json
const fs = require("fs");
const { Webhook } = require("standardwebhooks");

const cases = JSON.parse(fs.readFileSync(process.argv[2], "utf8"));
cases.forEach((c, i) => {
  for (const secret of c.secrets) {
    const wh = new Webhook(secret);
    wh.verify(c.body, c.headers, { jsonParse: false });
    let changedVerified = true;
    try {
      wh.verify(c.body + " ", c.headers, { jsonParse: false });
    } catch (e) {
      changedVerified = false;
    }
    if (changedVerified) {
      console.error(`case ${i}: a changed body verified`);
      process.exit(1);
    }
  }
});
console.log(`npm standardwebhooks: ${cases.length} deliveries verified`);
