// A page of the React hooks under StrictMode, for tests/browser/test_react_hooks.py. The test
// drives it through window.falTest and gives it `window.mintToken(scope, requestId)`, which mints
// a stream token on the test's side (the page holds no API key).

import { StrictMode, useState } from "react";
import { createRoot } from "react-dom/client";

import { useFalJob, useFalJobs } from "../../dist/react.js";

// Every EventSource the page opens, and those still open: what StrictMode's double mount must not double.
window.streams = { opened: 0, open: 0 };
const Native = window.EventSource;
window.EventSource = class CountedEventSource extends Native {
  constructor(url) {
    super(url);
    this.counted = true;
    window.streams.opened++;
    window.streams.open++;
  }

  close() {
    if (this.counted) window.streams.open--;
    this.counted = false;
    super.close();
  }
};

function Job({ requestId }) {
  const { job, connection, error } = useFalJob(requestId, {
    getToken: () => window.mintToken("job", requestId), // a new function each render: no new stream
  });
  return (
    <section data-testid="job" data-connection={connection} data-status={job?.status ?? ""}>
      <p data-testid="job-status">{job ? job.status : "waiting"}</p>
      {/* A link, not an <img>: this page is served by the test (no address of its own), and Chromium
          keeps such pages from loading loopback images. */}
      {job?.result?.images?.[0] && <a data-testid="job-image" href={job.result.images[0].url}>image</a>}
      {error && <p data-testid="job-error">{error.message}</p>}
    </section>
  );
}

function Jobs() {
  const { jobs, connection } = useFalJobs({ getToken: () => window.mintToken("user") });
  return (
    <ul data-testid="jobs" data-connection={connection}>
      {jobs.map((job) => (
        <li key={job.request_id} data-testid="jobs-item" data-request-id={job.request_id} data-status={job.status}>
          {job.request_id}: {job.status}
        </li>
      ))}
    </ul>
  );
}

function App() {
  const [requestId, setRequestId] = useState(null);
  const [list, setList] = useState(false);
  window.falTest = { showJob: setRequestId, hideJob: () => setRequestId(null), showList: () => setList(true),
                     hideList: () => setList(false) };
  return (
    <main>
      {requestId && <Job requestId={requestId} />}
      {list && <Jobs />}
    </main>
  );
}

createRoot(document.getElementById("root")).render(<StrictMode><App /></StrictMode>);
