"""Files users upload as job inputs: sniffed, streamed into the media store, owned, counted against
a daily quota, and turned into URLs fal can fetch when a job's input names them."""
