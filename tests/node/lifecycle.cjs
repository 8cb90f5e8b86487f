// The official `openai` Node SDK (pinned in .ci/package.json) through tunegate: upload, create, list with
// auto-pagination, retrieve, cancel. Run by tests/test_openai_node_sdk.py; prints one JSON object.
// Its files.create (v6) sends `file` before `purpose` in the form (v4 sent `purpose` first).
const fs = require("fs");
const path = require("path");

async function main() {
  const config = JSON.parse(process.argv[2]);
  const { OpenAI } = require(path.join(config.nodeModules, "openai"));
  const client = new OpenAI({ baseURL: config.baseURL, apiKey: config.apiKey, defaultHeaders: config.headers,
                              maxRetries: 0 });
  const out = {};
  const file = await client.files.create({ file: fs.createReadStream(config.trainingPath), purpose: "fine-tune" });
  out.file = file;
  const jobs = [];
  for (let i = 0; i < 3; i++) {
    jobs.push(await client.fineTuning.jobs.create({ training_file: file.id, model: config.model, suffix: `node-${i}` }));
  }
  out.created = jobs.map((j) => j.id);
  out.listed = [];
  for await (const job of client.fineTuning.jobs.list({ limit: 2 })) {  // pages of 2: follows `after`
    out.listed.push(job.id);
  }
  out.retrieved = await client.fineTuning.jobs.retrieve(jobs[0].id);
  out.cancelled = await client.fineTuning.jobs.cancel(jobs[1].id);
  try {
    await client.fineTuning.jobs.create({ training_file: file.id });  // no model: the gateway's 400
  } catch (err) {
    out.error = { status: err.status, body: err.error };
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((err) => {
  process.stderr.write(String(err && err.stack || err));
  process.exit(1);
});
